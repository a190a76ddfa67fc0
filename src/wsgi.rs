//! The per-request path of the WSGI middleware.
//!
//! `tidegate.wsgi.TideGateMiddleware` (Python) subclasses `MiddlewareCore` and configures it
//! once; from then on every request is decided by the one decision ([`crate::decide`]) without
//! running Python code of ours on the admitted path. This module adds only what is WSGI's own:
//! the call into the app, sending an answer (without a body for `HEAD`), and the wrapper that
//! gives the permit back when the server closes the body (PEP 3333).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3::PyTraverseError;

use crate::decide::{
    give_back, header_list, is_head, take_permit, Admission, Decider, DecisionConfig, Verdict,
};
use crate::errors::{config_error, wsgi_arity};
use crate::gate::{Gate, Ticket};

struct Config {
    app: Py<PyAny>,
    decider: Decider,
    /// Called as `(start_response, rendered, error)` to start the dependency 503.
    start_dependency: Py<PyAny>,
    dependency_error: Py<PyAny>,
    empty_body: Py<PyTuple>,
}

/// The Rust half of `TideGateMiddleware`. Not for direct use.
#[pyclass(module = "tidegate._tidegate", frozen, subclass)]
pub struct MiddlewareCore {
    config: OnceLock<Config>,
}

#[pymethods]
impl MiddlewareCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            config: OnceLock::new(),
        }
    }

    /// Sets everything the request path needs; callable once.
    #[pyo3(signature = (*, app, decision, start_dependency, dependency_error))]
    fn _configure(
        &self,
        py: Python<'_>,
        app: Py<PyAny>,
        decision: DecisionConfig<'_>,
        start_dependency: Py<PyAny>,
        dependency_error: Py<PyAny>,
    ) -> PyResult<()> {
        let config = Config {
            app,
            decider: Decider::new(py, decision)?,
            start_dependency,
            dependency_error,
            empty_body: PyTuple::empty(py).unbind(),
        };
        self.config
            .set(config)
            .map_err(|_| config_error("the middleware is already configured"))
    }

    /// The WSGI call. It takes the arguments as the tuple the server built, so the same tuple
    /// goes on to the app without building another one per request.
    #[pyo3(signature = (*args))]
    fn __call__(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<PyAny>> {
        let this = slf.get();
        let Some(config) = this.config.get() else {
            return Err(config_error("the middleware was not configured"));
        };
        if args.len() != 2 {
            return Err(wsgi_arity(args.len()));
        }
        let environ = args.get_borrowed_item(0)?;
        let environ_dict = environ.cast::<PyDict>().ok();
        match config
            .decider
            .decide(py, &environ, environ_dict.as_deref(), 0)?
        {
            Verdict::Admit(None) => this.call_app(py, config, args),
            Verdict::Admit(Some(Admission {
                gate,
                ticket,
                since,
            })) => {
                match this.call_app(py, config, args) {
                    Ok(body) => {
                        // The middleware, not the gate, is what the body keeps: a Python
                        // reference costs less per request than an atomic one.
                        let closing = ClosingBody {
                            inner: body,
                            slot: Slot::Middleware(slf.clone().unbind()),
                            ticket,
                            released: AtomicBool::new(false),
                            since,
                        };
                        Ok(Bound::new(py, closing)?.into_any().unbind())
                    }
                    Err(err) => {
                        give_back(gate, ticket, since);
                        Err(err)
                    }
                }
            }
            Verdict::Answer(rendered) => {
                let headers = PyList::empty(py);
                for header in rendered.getattr(intern!(py, "headers"))?.try_iter()? {
                    headers.append(header?)?;
                }
                let status = rendered.getattr(intern!(py, "status"))?;
                args.get_borrowed_item(1)?.call1((status, headers))?;
                body_of(py, config, &environ, environ_dict.as_deref(), &rendered)
            }
            Verdict::Shed { variant, html, .. } => {
                let rendition = if html { &variant.html } else { &variant.json };
                let headers = header_list(py, &rendition.headers)?;
                args.get_borrowed_item(1)?
                    .call1((rendition.status.bind(py), headers))?;
                Ok(if is_head(py, &environ, environ_dict.as_deref())? {
                    config.empty_body.clone_ref(py).into_any()
                } else {
                    rendition.body.clone_ref(py).into_any()
                })
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
                // Rendered like every refusal; Python starts the response (PEP 3333's exc_info
                // rules are its business); the body, or none for HEAD, is sent here.
                let (environ, start_response) = (args.get_item(0)?, args.get_item(1)?);
                let error = err.value(py);
                let rendered = config.decider.dependency(&environ, error)?;
                config
                    .start_dependency
                    .bind(py)
                    .call1((start_response, &rendered, error))?;
                let environ_dict = environ.cast::<PyDict>().ok();
                body_of(py, config, &environ, environ_dict, &rendered)
            }
            Err(err) => Err(err),
        }
    }
}

/// The body of an answer of ours: the `Rendered`'s, or none for `HEAD` (the one place a WSGI
/// answer drops its body; the headers stay those of a `GET`).
fn body_of(
    py: Python<'_>,
    config: &Config,
    environ: &Bound<'_, PyAny>,
    environ_dict: Option<&Bound<'_, PyDict>>,
    rendered: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    if is_head(py, environ, environ_dict)? {
        return Ok(config.empty_body.clone_ref(py).into_any());
    }
    let body = rendered.getattr(intern!(py, "body"))?;
    Ok(PyTuple::new(py, [body])?.into_any().unbind())
}

/// Wraps a framework's own WSGI callable (Flask's `app.wsgi_app`) so that the permit its
/// before-request hook left in the environ ([`crate::decide::DecisionCore`]) is given back when
/// the server closes the body, streamed or not, or at once if the app raises. A request that
/// holds no permit (turned away, exempt) passes through untouched.
#[pyclass(module = "tidegate._tidegate", frozen)]
pub struct ReleasingApp {
    app: Py<PyAny>,
}

#[pymethods]
impl ReleasingApp {
    #[new]
    fn new(app: Py<PyAny>) -> Self {
        Self { app }
    }

    /// The wrapped callable.
    #[getter]
    fn app(&self, py: Python<'_>) -> Py<PyAny> {
        self.app.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.app)
    }

    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        let outcome = self.app.bind(py).call(args, None);
        let environ = args.get_borrowed_item(0)?;
        let Ok(environ) = environ.cast::<PyDict>() else {
            return outcome.map(Bound::unbind);
        };
        let slot = take_permit(py, &environ)?.and_then(|permit| permit.get().take_slot());
        match (outcome, slot) {
            (Ok(body), Some((gate, ticket, since))) => {
                let closing = ClosingBody {
                    inner: body.unbind(),
                    slot: Slot::Gate(gate),
                    ticket,
                    released: AtomicBool::new(false),
                    since,
                };
                Ok(Bound::new(py, closing)?.into_any().unbind())
            }
            (Ok(body), None) => Ok(body.unbind()),
            (Err(err), slot) => {
                if let Some((gate, ticket, since)) = slot {
                    give_back(&gate, ticket, since);
                }
                Err(err)
            }
        }
    }
}

/// The response iterable handed to the server: iterates the app's body and, when the server
/// closes it (PEP 3333), closes that body first and then gives the permit back, exactly once.
// A freelist: one of these is made and dropped per admitted request.
#[pyclass(module = "tidegate._tidegate", frozen, freelist = 256)]
pub struct ClosingBody {
    inner: Py<PyAny>,
    slot: Slot,
    /// What the admission handed over, given back with the slot.
    ticket: Ticket,
    released: AtomicBool,
    /// When the request was admitted, for the duration histogram (`None`: not timed).
    since: Option<Instant>,
}

/// Whose gate slot a body gives back.
enum Slot {
    /// The middleware's own gate.
    Middleware(Py<MiddlewareCore>),
    /// A slot handed over from a permit (`ReleasingApp`).
    Gate(Arc<Gate>),
}

impl ClosingBody {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            let gate = match &self.slot {
                Slot::Middleware(owner) => owner
                    .get()
                    .config
                    .get()
                    .and_then(|config| config.decider.gate.as_ref()),
                Slot::Gate(gate) => Some(gate),
            };
            if let Some(gate) = gate {
                give_back(gate, self.ticket, self.since);
            }
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
            self.release();
        }
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
