//! `DecisionCore`, the decision as Python's framework adapters (the Flask hooks, the Django
//! middleware) call it: configuration, the before-request hook and the permit's way back.

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::PyTraverseError;

use super::{is_head, take_permit, Decider, DecisionConfig, Verdict, PERMIT_KEY};
use crate::errors::config_error;
use crate::gate::PermitPy;

/// The decision for frameworks that build their own response objects (the Flask hooks, the
/// Django middleware). Python's adapters subclass it and configure it once.
///
/// `decide(environ, exempt)` returns `None` to let the request through, or the `Rendered` to
/// answer with. An admitted request's permit is kept in the environ (Flask's and Django's
/// request objects each have their own), and `release(environ)` gives it back, exactly once;
/// `hand_over(environ)` takes it out for a streamed body to release when it is closed.
#[pyclass(module = "tidegate._tidegate", frozen, subclass)]
pub struct DecisionCore {
    decider: std::sync::OnceLock<Decider>,
    hooks: std::sync::OnceLock<Hooks>,
}

/// What `before()` needs to act as a framework's before-request hook: how to find the current
/// request's environ, which views are exempt, and how to answer.
struct Hooks {
    /// Called without arguments; `attrs` are then read off its result in turn to reach the
    /// environ (for Flask: the request context variable's `get`, then `request.environ`).
    context: Py<PyAny>,
    attrs: Vec<Py<PyString>>,
    /// view -> `EXEMPT_*` flags; while it is empty `exempt_of` is never called.
    exempt_views: Py<PyDict>,
    /// `() -> int`: the flags of the current request's view.
    exempt_of: Py<PyAny>,
    /// `(Rendered) -> response`: the framework's response for an answer of ours.
    on_answer: Py<PyAny>,
}

#[pymethods]
impl DecisionCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            decider: std::sync::OnceLock::new(),
            hooks: std::sync::OnceLock::new(),
        }
    }

    /// Sets everything the decision needs; callable once.
    #[pyo3(signature = (decision, /))]
    fn _configure(&self, py: Python<'_>, decision: DecisionConfig<'_>) -> PyResult<()> {
        let decider = Decider::new(py, decision)?;
        self.decider
            .set(decider)
            .map_err(|_| config_error("the decision is already configured"))
    }

    /// `None` to go on (an admitted request's permit is now in `environ`), or the `Rendered`
    /// to answer with.
    #[pyo3(signature = (environ, exempt=0))]
    fn decide(
        &self,
        py: Python<'_>,
        environ: &Bound<'_, PyDict>,
        exempt: u8,
    ) -> PyResult<Option<Py<PyAny>>> {
        let decider = self.configured()?;
        Ok(
            match decider.decide(py, environ.as_any(), Some(environ), exempt)? {
                Verdict::Admit(None) => None,
                Verdict::Admit(Some(admission)) => {
                    let permit = Bound::new(py, PermitPy::of(admission))?;
                    environ.set_item(intern!(py, PERMIT_KEY), permit)?;
                    None
                }
                Verdict::Answer(rendered) => Some(rendered.unbind()),
                Verdict::Shed { variant, html, .. } => {
                    let rendition = if html { &variant.html } else { &variant.json };
                    Some(rendition.rendered.clone_ref(py))
                }
            },
        )
    }

    /// Makes `before()` usable as a framework's before-request hook.
    #[pyo3(signature = (*, context, attrs, exempt_views, exempt_of, on_answer))]
    fn _bind_hooks(
        &self,
        context: Py<PyAny>,
        attrs: Vec<Py<PyString>>,
        exempt_views: Py<PyDict>,
        exempt_of: Py<PyAny>,
        on_answer: Py<PyAny>,
    ) -> PyResult<()> {
        let hooks = Hooks {
            context,
            attrs,
            exempt_views,
            exempt_of,
            on_answer,
        };
        self.hooks
            .set(hooks)
            .map_err(|_| config_error("the hooks are already bound"))
    }

    /// The before-request hook: `None` to go on, or the framework's response for an answer
    /// of ours.
    fn before(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let hooks = self.bound_hooks()?;
        let environ = hooks.environ(py)?;
        let exempt = if hooks.exempt_views.bind(py).is_empty() {
            0
        } else {
            hooks.exempt_of.bind(py).call0()?.extract::<u8>()?
        };
        match self.decide(py, &environ, exempt)? {
            None => Ok(None),
            Some(rendered) => Ok(Some(hooks.on_answer.bind(py).call1((rendered,))?.unbind())),
        }
    }

    /// The after-request step (`ProcessResponse`): a response that is not streamed is finished,
    /// so its permit goes back now (as a teardown hook would give it); a streamed one keeps it
    /// for its body's close (`ReleasingApp`).
    fn after<'py>(
        &self,
        py: Python<'py>,
        response: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let environ = self.bound_hooks()?.environ(py)?;
        if let Some(permit) = take_permit(py, &environ)? {
            if !is_streamed(py, &response)? {
                permit.get().release_once();
            }
        }
        Ok(response)
    }

    /// The dependency 503 for `error`, an open breaker's `CircuitOpenError` that came out of
    /// the app.
    fn dependency(
        &self,
        environ: &Bound<'_, PyDict>,
        error: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        Ok(self
            .configured()?
            .dependency(environ.as_any(), error)?
            .unbind())
    }

    /// The body to send for `rendered`: its bytes, or none for a `HEAD` request.
    fn body_for<'py>(
        &self,
        py: Python<'py>,
        environ: &Bound<'py, PyDict>,
        rendered: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if is_head(py, environ.as_any(), Some(environ))? {
            return Ok(PyBytes::new(py, b"").into_any());
        }
        rendered.getattr(intern!(py, "body"))
    }

    /// Gives back the permit `decide` left in `environ`, if it is still there.
    fn release(&self, py: Python<'_>, environ: &Bound<'_, PyDict>) -> PyResult<()> {
        if let Some(permit) = take_permit(py, environ)? {
            permit.get().release_once();
        }
        Ok(())
    }

    /// Takes the permit out of `environ` for a response body: the body's close gives it back
    /// (call `release()` on what this returns), and `release(environ)` no longer does; `None`
    /// when the request holds none.
    fn hand_over<'py>(
        &self,
        py: Python<'py>,
        environ: &Bound<'py, PyDict>,
    ) -> PyResult<Option<Bound<'py, PermitPy>>> {
        let permit = take_permit(py, environ)?;
        if permit.is_some() {
            // Overwritten, not deleted: the key stays, so the dict keeps its shape.
            environ.set_item(intern!(py, PERMIT_KEY), py.None())?;
        }
        Ok(permit)
    }
}

/// Whether a framework response streams its body: a list or tuple body does not (checked
/// without running Python code); anything else is asked through its `is_streamed`.
fn is_streamed(py: Python<'_>, response: &Bound<'_, PyAny>) -> PyResult<bool> {
    if let Some(body) = response.getattr_opt(intern!(py, "response"))? {
        if body.is_exact_instance_of::<PyList>() || body.is_exact_instance_of::<PyTuple>() {
            return Ok(false);
        }
    }
    response.getattr(intern!(py, "is_streamed"))?.is_truthy()
}

impl Hooks {
    fn environ<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut found = self.context.bind(py).call0()?;
        for attr in &self.attrs {
            found = found.getattr(attr.bind(py))?;
        }
        Ok(found.cast_into::<PyDict>()?)
    }
}

impl DecisionCore {
    fn bound_hooks(&self) -> PyResult<&Hooks> {
        self.hooks
            .get()
            .ok_or_else(|| config_error("the hooks were not bound"))
    }

    fn configured(&self) -> PyResult<&Decider> {
        self.decider
            .get()
            .ok_or_else(|| config_error("the decision was not configured"))
    }
}

/// Flask's `app.preprocess_request`, wrapped: the app's before-request hooks, with tidegate's
/// (`hook`, which calls [`DecisionCore::before`]) among them where Flask put it. When that hook
/// is the only thing Flask's own method would run (no other before-request hook, no URL value
/// preprocessor, for the app or any blueprint), the decision is made here and Flask's method,
/// which would only dispatch to it, is skipped: same outcome, without Flask's per-hook cost.
#[pyclass(module = "tidegate._tidegate", frozen)]
pub struct PreprocessRequest {
    core: Py<DecisionCore>,
    app: Py<PyAny>,
    hook: Py<PyAny>,
    /// What `app.preprocess_request` was.
    original: Py<PyAny>,
    /// Whether `original` is Flask's own method, which does nothing but run the hooks.
    skippable: bool,
}

#[pymethods]
impl PreprocessRequest {
    #[new]
    #[pyo3(signature = (core, app, hook, original, *, skippable))]
    fn new(
        core: Py<DecisionCore>,
        app: Py<PyAny>,
        hook: Py<PyAny>,
        original: Py<PyAny>,
        skippable: bool,
    ) -> Self {
        Self {
            core,
            app,
            hook,
            original,
            skippable,
        }
    }

    /// The wrapped method.
    #[getter]
    fn original(&self, py: Python<'_>) -> Py<PyAny> {
        self.original.clone_ref(py)
    }

    fn __call__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.skippable && self.hook_runs_alone(py)? {
            return Ok(self.core.get().before(py)?.unwrap_or_else(|| py.None()));
        }
        Ok(self.original.bind(py).call0()?.unbind())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.core)?;
        visit.call(&self.app)?;
        visit.call(&self.hook)?;
        visit.call(&self.original)
    }
}

impl PreprocessRequest {
    /// Whether `hook` is all Flask's `preprocess_request` would run: the app's only
    /// before-request function, and no URL value preprocessor anywhere. Flask keeps both kinds
    /// in dicts of lists by blueprint name (empty lists may linger there).
    fn hook_runs_alone(&self, py: Python<'_>) -> PyResult<bool> {
        let app = self.app.bind(py);
        let befores = app.getattr(intern!(py, "before_request_funcs"))?;
        let Ok(befores) = befores.cast::<PyDict>() else {
            return Ok(false);
        };
        let mut found = false;
        for (name, funcs) in befores.iter() {
            let Ok(funcs) = funcs.cast_exact::<PyList>() else {
                return Ok(false);
            };
            match funcs.len() {
                0 => {}
                1 if name.is_none() && funcs.get_item(0)?.is(self.hook.bind(py)) => found = true,
                _ => return Ok(false),
            }
        }
        if !found {
            return Ok(false);
        }
        let preprocessors = app.getattr(intern!(py, "url_value_preprocessors"))?;
        let Ok(preprocessors) = preprocessors.cast::<PyDict>() else {
            return Ok(false);
        };
        for (_, funcs) in preprocessors.iter() {
            if !funcs
                .cast_exact::<PyList>()
                .is_ok_and(|funcs| funcs.is_empty())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Flask's `app.process_response`, wrapped: the original first (the app's after-request hooks,
/// the session), then [`DecisionCore::after`], which gives a finished response's permit back.
#[pyclass(module = "tidegate._tidegate", frozen)]
pub struct ProcessResponse {
    core: Py<DecisionCore>,
    /// What `app.process_response` was.
    original: Py<PyAny>,
}

#[pymethods]
impl ProcessResponse {
    #[new]
    fn new(core: Py<DecisionCore>, original: Py<PyAny>) -> Self {
        Self { core, original }
    }

    /// The wrapped method.
    #[getter]
    fn original(&self, py: Python<'_>) -> Py<PyAny> {
        self.original.clone_ref(py)
    }

    fn __call__<'py>(
        &self,
        py: Python<'py>,
        response: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let response = self.original.bind(py).call1((response,))?;
        self.core.get().after(py, response)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.core)?;
        visit.call(&self.original)
    }
}
