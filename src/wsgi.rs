//! The per-request path of the WSGI middleware.
//!
//! `tidegate.wsgi.TideGateMiddleware` (Python) subclasses `MiddlewareCore` and configures it
//! once; from then on every request is decided here without running Python code of ours:
//! route lookup (health and exempt paths), maintenance, admission, the call into the app, and
//! the wrapper that gives the permit back when the server closes the body. Responses other
//! than the overload 503 are rendered by Python callbacks; the overload 503 is replayed from
//! variants Python rendered ahead of time, because shedding must cost less than serving.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::accept::str_prefers_html;
use crate::gate::Gate;
use crate::maintenance::{Maintenance, MaintenanceSwitchPy};

/// One pre-rendered overload response (for one Retry-After value).
struct Variant {
    json_headers: Vec<Py<PyTuple>>,
    json_body: Py<PyTuple>,
    html_headers: Vec<Py<PyTuple>>,
    html_body: Py<PyTuple>,
}

/// As Python hands a variant over: JSON headers and body, then HTML headers and body.
type RenderedVariant = (Vec<Py<PyTuple>>, Py<PyAny>, Vec<Py<PyTuple>>, Py<PyAny>);

struct Config {
    app: Py<PyAny>,
    gate: Option<Arc<Gate>>,
    /// path -> None (exempt: straight to the app) or a callable(environ, start_response).
    routes: Py<PyDict>,
    maintenance: Option<Arc<Maintenance>>,
    /// Called as `(environ, start_response)` while maintenance is on; `None` means the request
    /// may bypass it.
    on_maintenance: Py<PyAny>,
    /// Called as `(environ, start_response, exc)` for an exception of `dependency_error`.
    on_dependency: Py<PyAny>,
    dependency_error: Py<PyAny>,
    overload_status: Py<PyString>,
    variants: Vec<Variant>,
    empty_body: Py<PyTuple>,
}

/// The Rust half of `TideGateMiddleware`. Not for direct use.
#[pyclass(module = "tidegate._tidegate", frozen, subclass)]
pub struct MiddlewareCore {
    config: OnceLock<Config>,
    seed: AtomicU64,
}

#[pymethods]
impl MiddlewareCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            config: OnceLock::new(),
            seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// Sets everything the request path needs; callable once.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, app, gate, routes, maintenance, on_maintenance, on_dependency, dependency_error, overload_status, overload_variants))]
    fn _configure(
        &self,
        app: Py<PyAny>,
        gate: Option<PyRef<'_, crate::gate::GatePy>>,
        routes: Py<PyDict>,
        maintenance: Option<PyRef<'_, MaintenanceSwitchPy>>,
        on_maintenance: Py<PyAny>,
        on_dependency: Py<PyAny>,
        dependency_error: Py<PyAny>,
        overload_status: Py<PyString>,
        overload_variants: Vec<RenderedVariant>,
        py: Python<'_>,
    ) -> PyResult<()> {
        if overload_variants.is_empty() {
            return Err(PyRuntimeError::new_err(
                "overload_variants must not be empty",
            ));
        }
        let variants = overload_variants
            .into_iter()
            .map(|(json_headers, json_body, html_headers, html_body)| {
                Ok(Variant {
                    json_headers,
                    json_body: PyTuple::new(py, [json_body])?.unbind(),
                    html_headers,
                    html_body: PyTuple::new(py, [html_body])?.unbind(),
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let config = Config {
            app,
            gate: gate.map(|g| g.gate.clone()),
            routes,
            maintenance: maintenance.map(|m| m.core.clone()),
            on_maintenance,
            on_dependency,
            dependency_error,
            overload_status,
            variants,
            empty_body: PyTuple::empty(py).unbind(),
        };
        self.config
            .set(config)
            .map_err(|_| PyRuntimeError::new_err("the middleware is already configured"))
    }

    /// The WSGI call. It takes the arguments as the tuple the server built, so the same tuple
    /// goes on to the app without building another one per request.
    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        let Some(config) = self.config.get() else {
            return Err(PyRuntimeError::new_err("the middleware was not configured"));
        };
        if args.len() != 2 {
            return Err(PyTypeError::new_err(format!(
                "a WSGI app takes (environ, start_response), got {} arguments",
                args.len()
            )));
        }
        let environ = args.get_borrowed_item(0)?;
        let environ_dict = environ.cast::<PyDict>().ok();
        // Only a str can name a route (and an unhashable value must not raise here).
        if let Some(path) = lookup(&environ, environ_dict.as_deref(), intern!(py, "PATH_INFO"))?
            .filter(|path| path.is_instance_of::<PyString>())
        {
            if let Some(route) = config.routes.bind(py).get_item(&path)? {
                if route.is_none() {
                    return self.call_app(py, config, args);
                }
                return route.call(args, None).map(Bound::unbind);
            }
        }
        if config.maintenance.as_ref().is_some_and(|m| m.active()) {
            let reply = config.on_maintenance.bind(py).call(args, None)?;
            if !reply.is_none() {
                return Ok(reply.unbind());
            }
        }
        let Some(gate) = &config.gate else {
            return self.call_app(py, config, args);
        };
        if !gate.try_acquire() {
            let start_response = args.get_borrowed_item(1)?;
            return self.shed(
                py,
                config,
                &environ,
                environ_dict.as_deref(),
                &start_response,
            );
        }
        match self.call_app(py, config, args) {
            Ok(body) => {
                let closing = ClosingBody {
                    inner: body,
                    gate: gate.clone(),
                    released: AtomicBool::new(false),
                };
                Ok(Bound::new(py, closing)?.into_any().unbind())
            }
            Err(err) => {
                gate.release();
                Err(err)
            }
        }
    }
}

impl MiddlewareCore {
    /// Calls the app; an exception of the dependency type becomes the dependency 503.
    fn call_app(
        &self,
        py: Python<'_>,
        config: &Config,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<PyAny>> {
        match config.app.bind(py).call(args, None) {
            Ok(body) => Ok(body.unbind()),
            Err(err) if err.is_instance(py, config.dependency_error.bind(py)) => {
                let (environ, start_response) = (args.get_item(0)?, args.get_item(1)?);
                config
                    .on_dependency
                    .call1(py, (environ, start_response, err.value(py)))
            }
            Err(err) => Err(err),
        }
    }

    /// Answers the overload 503 from a pre-rendered variant.
    fn shed(
        &self,
        py: Python<'_>,
        config: &Config,
        environ: &Bound<'_, PyAny>,
        environ_dict: Option<&Bound<'_, PyDict>>,
        start_response: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let variant = &config.variants[self.pick(config.variants.len())];
        let html = match lookup(environ, environ_dict, intern!(py, "HTTP_ACCEPT"))? {
            Some(accept) => accept.cast::<PyString>().is_ok_and(str_prefers_html),
            None => false,
        };
        let (headers, body) = if html {
            (&variant.html_headers, &variant.html_body)
        } else {
            (&variant.json_headers, &variant.json_body)
        };
        let head = match lookup(environ, environ_dict, intern!(py, "REQUEST_METHOD"))? {
            Some(method) => method.eq(intern!(py, "HEAD"))?,
            None => false,
        };
        let headers = PyList::new(py, headers.iter().map(|h| h.bind(py)))?;
        start_response.call1((config.overload_status.bind(py), headers))?;
        Ok(if head {
            config.empty_body.clone_ref(py).into_any()
        } else {
            body.clone_ref(py).into_any()
        })
    }

    /// A cheap, well-spread index for Retry-After jitter (xorshift over a shared seed).
    fn pick(&self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let mut x = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        x ^= x >> 30;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        (x % n as u64) as usize
    }
}

/// `environ[key]` or `None`, without building a `KeyError` when it is missing.
fn lookup<'py>(
    environ: &Bound<'py, PyAny>,
    dict: Option<&Bound<'py, PyDict>>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    match dict {
        Some(dict) => dict.get_item(key),
        None => {
            let value = environ.call_method1(intern!(environ.py(), "get"), (key,))?;
            Ok((!value.is_none()).then_some(value))
        }
    }
}

/// The response iterable handed to the server: iterates the app's body and, when the server
/// closes it (PEP 3333), closes that body first and then gives the permit back, exactly once.
// A freelist: one of these is made and dropped per admitted request.
#[pyclass(module = "tidegate._tidegate", frozen, freelist = 256)]
pub struct ClosingBody {
    inner: Py<PyAny>,
    gate: Arc<Gate>,
    released: AtomicBool,
}

impl ClosingBody {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.gate.release();
        }
    }
}

impl ClosingBody {
    /// Closes the app's body (when it has a `close()`), exactly as PEP 3333 asks of servers.
    fn close_inner(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.inner.bind(py);
        if inner.is_exact_instance_of::<PyList>() || inner.is_exact_instance_of::<PyTuple>() {
            return Ok(());
        }
        match inner.getattr_opt(intern!(py, "close"))? {
            Some(close) => close.call0().map(drop),
            None => Ok(()),
        }
    }
}

impl Drop for ClosingBody {
    fn drop(&mut self) {
        // The safety net for servers that never call close(): close the app's body first, so
        // the app is done with this request before its slot goes to the next one.
        if !self.released.load(Ordering::Acquire) {
            Python::attach(|py| {
                if let Err(err) = self.close_inner(py) {
                    err.write_unraisable(py, Some(self.inner.bind(py)));
                }
            });
        }
        self.release();
    }
}

#[pymethods]
impl ClosingBody {
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.inner.bind(py).try_iter()?.into_any())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let outcome = self.close_inner(py);
        self.release();
        outcome
    }

    /// Whether the permit has been given back (for tests and debugging).
    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }
}
