//! The per-request path of the ASGI middleware.
//!
//! `tidegate.asgi.TideGateMiddleware` (Python) subclasses `AsgiCore` and configures it once.
//! An `http` request is decided by the one decision ([`crate::decide`]) through a view of its
//! scope: [`Exchange::get`] answers the decision's questions (the path always; the client
//! address and bypass header only while maintenance is on; `Accept` and the method only when
//! refusing) in WSGI's terms, reading `scope["headers"]` only when asked. This module adds
//! only what is ASGI's own: the messages of an answer of ours, and the permit's way back.
//!
//! The permit goes back when the server has taken the app's last `http.response.body` (no
//! `more_body`: its `send` returned), or when the app's coroutine ends, whichever comes first: by returning, by raising
//! (after a client hung up, Starlette and FastAPI stop a streamed body and return), or by
//! being cancelled. Work an app does after its last body (Starlette's background tasks) holds
//! no permit. No Python code of ours runs on the admitted path: the app's coroutine is driven
//! through [`Exchange`], an awaitable that forwards every step to it.
//!
//! The app runs only when the server awaits the middleware, in the task that awaits it (never
//! at the call: `asyncio.gather` or `create_task` await it in a task of their own, and an
//! anyio task group or a timeout binds to the task it starts in). The server's `send` of the
//! last body, which the app calls from the task that will await it, takes its first step at
//! once: when the server takes the body whole, as it mostly does, the permit goes back there
//! and the app awaits [`Sent`], one finished awaitable shared by every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;
use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::PyTraverseError;

mod step;

use crate::decide::{is_head, Decider, DecisionConfig, Verdict};
use crate::errors::config_error;
use crate::gate::PermitPy;
use step::Step;

/// An answer of ours in ASGI's terms: what `http.response.start` and `http.response.body` say.
struct Reply {
    status: Py<PyAny>,
    /// `(name, value)` as lowercase latin-1 bytes, as ASGI wants them.
    headers: Vec<Py<PyTuple>>,
    body: Py<PyBytes>,
}

impl Reply {
    /// The ASGI form of a `Rendered` (`tidegate.responses`).
    fn of(py: Python<'_>, rendered: &Bound<'_, PyAny>) -> PyResult<Self> {
        let status: String = rendered.getattr(intern!(py, "status"))?.extract()?;
        let code = status
            .get(..3)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| PyValueError::new_err(format!("not a status line: {status:?}")))?;
        let headers: Vec<(String, String)> = rendered.getattr(intern!(py, "headers"))?.extract()?;
        let headers = headers
            .into_iter()
            .map(|(name, value)| {
                let name = latin1(&name.to_ascii_lowercase())?;
                let value = latin1(&value)?;
                Ok(PyTuple::new(py, [PyBytes::new(py, &name), PyBytes::new(py, &value)])?.unbind())
            })
            .collect::<PyResult<Vec<_>>>()?;
        let body = rendered
            .getattr(intern!(py, "body"))?
            .cast_into::<PyBytes>()?
            .unbind();
        Ok(Self {
            status: code.into_pyobject(py)?.into_any().unbind(),
            headers,
            body,
        })
    }

    /// Fresh `http.response.start` and `http.response.body` messages (no body for `HEAD`),
    /// in a list: whatever handles them after us may change them.
    fn messages<'py>(&self, py: Python<'py>, head: bool) -> PyResult<Bound<'py, PyList>> {
        let start = PyDict::new(py);
        start.set_item(intern!(py, "type"), intern!(py, "http.response.start"))?;
        start.set_item(intern!(py, "status"), self.status.bind(py))?;
        let headers = PyList::new(py, self.headers.iter().map(|h| h.bind(py)))?;
        start.set_item(intern!(py, "headers"), headers)?;
        let body = PyDict::new(py);
        body.set_item(intern!(py, "type"), intern!(py, "http.response.body"))?;
        if head {
            body.set_item(intern!(py, "body"), PyBytes::new(py, b""))?;
        } else {
            body.set_item(intern!(py, "body"), self.body.bind(py))?;
        }
        PyList::new(py, [start, body])
    }
}

fn latin1(text: &str) -> PyResult<Vec<u8>> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| PyValueError::new_err(format!("header text is not latin-1: {text:?}")))
}

struct Config {
    app: Py<PyAny>,
    decider: Decider,
    /// `(scope, receive, send) -> awaitable` for every scope that is not `http`.
    other: Py<PyAny>,
    /// `async (send, messages, error)`: sends `messages` in turn, then raises `error` unless
    /// it is `None` (answers of ours, and a held-back 500).
    answer: Py<PyAny>,
    dependency_error: Py<PyAny>,
    /// The overload 503 of each of the decision's variants, as `(json, html)`.
    overload: Vec<(Reply, Reply)>,
    /// What the app awaits of a send with nothing left to wait for.
    sent: Py<Sent>,
}

/// The Rust half of `tidegate.asgi.TideGateMiddleware`. Not for direct use.
#[pyclass(module = "tidegate._tidegate", frozen, subclass)]
pub struct AsgiCore {
    config: OnceLock<Config>,
}

#[pymethods]
impl AsgiCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            config: OnceLock::new(),
        }
    }

    /// Sets everything the request path needs; callable once.
    #[pyo3(signature = (*, app, decision, other, answer, dependency_error))]
    fn _configure(
        &self,
        py: Python<'_>,
        app: Py<PyAny>,
        decision: DecisionConfig<'_>,
        other: Py<PyAny>,
        answer: Py<PyAny>,
        dependency_error: Py<PyAny>,
    ) -> PyResult<()> {
        let decider = Decider::new(py, decision)?;
        let overload = decider
            .variants
            .iter()
            .map(|variant| {
                Ok((
                    Reply::of(py, variant.json.rendered.bind(py))?,
                    Reply::of(py, variant.html.rendered.bind(py))?,
                ))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let config = Config {
            app,
            decider,
            other,
            answer,
            dependency_error,
            overload,
            sent: Py::new(py, Sent)?,
        };
        self.config
            .set(config)
            .map_err(|_| config_error("the middleware is already configured"))
    }

    /// The ASGI call: an `http` request is decided here; any other scope goes to `other`.
    #[pyo3(signature = (scope, receive, send, /))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        py: Python<'py>,
        scope: &Bound<'py, PyAny>,
        receive: &Bound<'py, PyAny>,
        send: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let config = slf.get().configured()?;
        let http = match scope.cast::<PyDict>() {
            Ok(dict) => match dict.get_item(intern!(py, "type"))? {
                Some(kind) if text(&kind) == Some("http") => Some(dict),
                _ => None,
            },
            Err(_) => None,
        };
        let Some(fields) = http else {
            return config.other.bind(py).call1((scope, receive, send));
        };
        let exchange = Bound::new(py, Exchange::new(slf, fields, send))?;
        match config.decider.decide(py, exchange.as_any(), None, 0)? {
            Verdict::Admit(admission) => {
                let this = exchange.get();
                *this.slot.lock() = admission.map(|admitted| (admitted.ticket, admitted.since));
                let steps = match config
                    .app
                    .bind(py)
                    .call1((scope, receive, &exchange))
                    .and_then(|awaitable| steppable(&awaitable))
                {
                    Ok(steps) => steps,
                    Err(err) => {
                        this.release();
                        return Err(err);
                    }
                };
                *this.steps.lock() = Some(steps.unbind());
                Ok(exchange.into_any())
            }
            Verdict::Answer(rendered) => {
                let head = is_head(py, exchange.as_any(), None)?;
                let messages = Reply::of(py, &rendered)?.messages(py, head)?;
                config.answer.bind(py).call1((send, messages, py.None()))
            }
            Verdict::Shed { index, html, .. } => {
                let (json, as_html) = &config.overload[index];
                let reply = if html { as_html } else { json };
                let head = is_head(py, exchange.as_any(), None)?;
                let messages = reply.messages(py, head)?;
                config.answer.bind(py).call1((send, messages, py.None()))
            }
        }
    }

    /// The decision for a scope the adapter serves itself (a gated websocket): `None` to go
    /// on without a permit, a `Permit` to go on with (release it when done), or the
    /// `Rendered` to refuse with.
    fn decide(slf: &Bound<'_, Self>, scope: &Bound<'_, PyDict>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let config = slf.get().configured()?;
        let view = Bound::new(py, Exchange::new(slf, scope, &py.None().into_bound(py)))?;
        Ok(match config.decider.decide(py, view.as_any(), None, 0)? {
            Verdict::Admit(None) => py.None(),
            Verdict::Admit(Some(admission)) => {
                Bound::new(py, PermitPy::of(admission))?.into_any().unbind()
            }
            Verdict::Answer(rendered) => rendered.unbind(),
            Verdict::Shed { variant, html, .. } => {
                let rendition = if html { &variant.html } else { &variant.json };
                rendition.rendered.clone_ref(py)
            }
        })
    }
}

impl AsgiCore {
    fn configured(&self) -> PyResult<&Config> {
        self.config
            .get()
            .ok_or_else(|| config_error("the middleware was not configured"))
    }
}

/// One `http` request on its way through the middleware. It is three things at once, so that
/// an admitted request costs one object of ours:
///
/// - the request view the decision reads (`get`, in WSGI's terms);
/// - the `send` the app is given (`__call__`): it notes the start of the response and gives
///   the permit back at the last body, then hands the message on;
/// - the awaitable the server awaits (`__await__`, `__next__`, `send`, `throw`, `close`): it
///   forwards every step to the app's coroutine and gives the permit back when that ends.
///
/// An open breaker's error out of the app becomes the dependency 503 while no response has
/// gone out. Frameworks answer an error with a 500 before they raise it again (Starlette's
/// `ServerErrorMiddleware`), so a 500 is held back until the app ends: sent as it was when
/// the app returns or fails otherwise, replaced by the 503 when that error comes out.
#[pyclass(module = "tidegate._tidegate", frozen)]
pub struct Exchange {
    core: Py<AsgiCore>,
    scope: Py<PyDict>,
    send: Py<PyAny>,
    /// While it holds a slot of the gate: what its admission handed over, and when it was
    /// admitted (for the duration histogram; `None`: not timed). Taken when it goes back.
    slot: Mutex<Option<(crate::gate::Ticket, Option<std::time::Instant>)>>,
    /// Whether a response start went out to the server.
    started: AtomicBool,
    /// Whether the app's response is a 500, held back in `held`.
    holding: AtomicBool,
    /// Whether `steps` now sends messages of ours instead of running the app.
    answering: AtomicBool,
    /// What the awaitable steps through: the app's coroutine, then, to finish, the sending of
    /// an answer of ours or of the held-back messages; `None` once over.
    steps: Mutex<Option<Py<PyAny>>>,
    held: Mutex<Vec<Py<PyAny>>>,
}

impl Exchange {
    fn new(core: &Bound<'_, AsgiCore>, scope: &Bound<'_, PyDict>, send: &Bound<'_, PyAny>) -> Self {
        Self {
            core: core.clone().unbind(),
            scope: scope.clone().unbind(),
            send: send.clone().unbind(),
            slot: Mutex::new(None),
            started: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            answering: AtomicBool::new(false),
            steps: Mutex::new(None),
            held: Mutex::new(Vec::new()),
        }
    }

    /// Gives the permit back, once.
    fn release(&self) {
        let Some((ticket, since)) = self.slot.lock().take() else {
            return;
        };
        if let Some(gate) = self
            .core
            .get()
            .config
            .get()
            .and_then(|config| config.decider.gate.as_ref())
        {
            crate::decide::give_back(gate, ticket, since);
        }
    }

    /// What one step of the app (or of our sending) came to: `Some` value it yields, `None`
    /// when all is over, or the error to raise.
    fn after_step<'py>(
        slf: &Bound<'py, Self>,
        outcome: Step<'py>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let this = slf.get();
        let error = match outcome {
            Step::Yielded(value) => return Ok(Some(value)),
            Step::Returned => None,
            Step::Raised(err) => Some(err),
        };
        this.release();
        if this.answering.load(Ordering::Acquire) {
            this.steps.lock().take();
            return error.map_or(Ok(None), Err);
        }
        let config = this.core.get().configured()?;
        let held = std::mem::take(&mut *this.held.lock());
        let dependency = error.as_ref().is_some_and(|err| {
            !this.started.load(Ordering::Acquire)
                && err.is_instance(py, config.dependency_error.bind(py))
        });
        let (messages, error) = match error {
            Some(err) if dependency => {
                // The dependency 503, rendered like every refusal, in place of the app's.
                let rendered = config.decider.dependency(slf.as_any(), err.value(py))?;
                let head = is_head(py, slf.as_any(), None)?;
                (Reply::of(py, &rendered)?.messages(py, head)?, py.None())
            }
            // The held-back 500 goes out as it was, and the app's error after it.
            error if !held.is_empty() => (
                PyList::new(py, held)?,
                error.map_or_else(|| py.None(), |err| err.into_value(py).into_any()),
            ),
            error => {
                this.steps.lock().take();
                return error.map_or(Ok(None), Err);
            }
        };
        let steps = config
            .answer
            .bind(py)
            .call1((this.send.bind(py), messages, error))?;
        this.answering.store(true, Ordering::Release);
        *this.steps.lock() = Some(steps.clone().unbind());
        let first = step::send(&steps, &py.None().into_bound(py));
        Self::after_step(slf, first)
    }

    fn current<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.steps
            .lock()
            .as_ref()
            .map(|steps| steps.bind(py).clone())
    }

    /// One step the server asked for, with `value` (`None` but to a coroutine that waits for
    /// a value).
    fn resume<'py>(
        slf: &Bound<'py, Self>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let this = slf.get();
        let Some(steps) = this.current(py) else {
            return Ok(None);
        };
        Self::after_step(slf, step::send(&steps, value))
    }

    /// Hands the last body on; the permit goes back once the server has taken it. The
    /// server's `send` takes its first step here, in the app's task: when the server takes the
    /// body at once, as it mostly does, the permit goes back now and the app awaits [`Sent`].
    fn send_last<'py>(
        slf: &Bound<'py, Self>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let sending = match this
            .send
            .bind(py)
            .call1((message,))
            .and_then(|awaitable| steppable(&awaitable))
        {
            Ok(sending) => sending,
            Err(err) => {
                this.release();
                return Err(err);
            }
        };
        let (steps, first) = match step::send(&sending, &py.None().into_bound(py)) {
            Step::Returned => {
                this.release();
                return Ok(this
                    .core
                    .get()
                    .configured()?
                    .sent
                    .bind(py)
                    .clone()
                    .into_any());
            }
            Step::Yielded(value) => (Some(sending.unbind()), Ok(value.unbind())),
            Step::Raised(err) => {
                this.release();
                (None, Err(err))
            }
        };
        let last = LastBody {
            exchange: slf.clone().unbind(),
            steps: Mutex::new(steps),
            first: Mutex::new(Some(first)),
        };
        Ok(Bound::new(py, last)?.into_any())
    }

    /// Keeps `message` (part of a 500) back until the app ends; the app awaits [`Sent`].
    fn hold<'py>(
        &self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.held.lock().push(message.clone().unbind());
        Ok(self
            .core
            .get()
            .configured()?
            .sent
            .bind(py)
            .clone()
            .into_any())
    }

    /// The request header `name` (lowercase, `-` between words) as WSGI would give it:
    /// latin-1 text, several fields joined by `,`.
    fn header<'py>(&self, py: Python<'py>, name: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
        let scope = self.scope.bind(py);
        let Some(headers) = scope.get_item(intern!(py, "headers"))? else {
            return Ok(None);
        };
        let mut found: Option<String> = None;
        for pair in headers.try_iter()? {
            let pair = pair?;
            let Ok(key) = pair.get_item(0) else { continue };
            let Ok(key) = key.cast::<PyBytes>() else {
                continue;
            };
            if !key.as_bytes().eq_ignore_ascii_case(name) {
                continue;
            }
            let Ok(value) = pair.get_item(1) else {
                continue;
            };
            let Ok(value) = value.cast::<PyBytes>() else {
                continue;
            };
            let text: String = value.as_bytes().iter().map(|&b| char::from(b)).collect();
            found = Some(match found {
                None => text,
                Some(before) => before + "," + &text,
            });
        }
        Ok(found.map(|text| PyString::new(py, &text).into_any()))
    }

    /// The path the app sees, relative to `root_path` when the server put that in front.
    fn path<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let scope = self.scope.bind(py);
        let Some(path) = scope.get_item(intern!(py, "path"))? else {
            return Ok(None);
        };
        let Some(root) = scope
            .get_item(intern!(py, "root_path"))?
            .filter(|root| root.is_truthy().unwrap_or(false))
        else {
            return Ok(Some(path));
        };
        if let (Ok(path_text), Ok(root_text)) = (path.cast::<PyString>(), root.cast::<PyString>()) {
            let (path_text, root_text) = (path_text.to_cow()?, root_text.to_cow()?);
            if let Some(rest) = path_text.strip_prefix(root_text.as_ref()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return Ok(Some(PyString::new(py, rest).into_any()));
                }
            }
        }
        Ok(Some(path))
    }
}

#[pymethods]
impl Exchange {
    /// The fact the decision asks for, by its WSGI environ key: `PATH_INFO`, `REQUEST_METHOD`,
    /// `REMOTE_ADDR`, `QUERY_STRING` or `HTTP_<NAME>` (a request header); `default` for any
    /// other key or a fact the request does not have.
    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let found = match key.cast::<PyString>() {
            Ok(key) => self.fact(py, key)?,
            Err(_) => None,
        };
        Ok(found.or(default))
    }

    /// The ASGI scope.
    #[getter]
    fn scope(&self, py: Python<'_>) -> Py<PyDict> {
        self.scope.clone_ref(py)
    }

    /// The app's `send`: notes the start of the response, gives the permit back at the last
    /// body, then hands `message` on (or holds it back, for a 500).
    #[pyo3(signature = (message, /))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let Ok(fields) = message.cast::<PyDict>() else {
            return this.send.bind(py).call1((message,));
        };
        let Some(kind) = fields.get_item(intern!(py, "type"))? else {
            return this.send.bind(py).call1((message,));
        };
        match text(&kind) {
            Some("http.response.body") => {
                let more = match fields.get_item(intern!(py, "more_body"))? {
                    Some(more) => more.is_truthy()?,
                    None => false,
                };
                let holding = this.holding.load(Ordering::Acquire);
                if !more && !holding {
                    return Self::send_last(slf, message);
                }
                if !more {
                    this.release();
                }
                if holding {
                    return this.hold(py, message);
                }
            }
            Some("http.response.start") => {
                let status = fields.get_item(intern!(py, "status"))?;
                if status.is_some_and(|status| status.extract::<i64>().ok() == Some(500)) {
                    this.holding.store(true, Ordering::Release);
                    return this.hold(py, message);
                }
                this.started.store(true, Ordering::Release);
            }
            _ => {}
        }
        this.send.bind(py).call1((message,))
    }

    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        Self::resume(slf, &slf.py().None().into_bound(slf.py()))
    }

    /// The generator protocol's `send` (the server's, not the app's).
    #[pyo3(signature = (value, /))]
    fn send<'py>(slf: &Bound<'py, Self>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        Self::resume(slf, value)?.ok_or_else(|| PyStopIteration::new_err(()))
    }

    /// Passes an exception (a cancellation) on to the app's coroutine.
    #[pyo3(signature = (*args))]
    fn throw<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let Some(steps) = slf.get().current(py) else {
            // Nothing left to throw into: raised here, as a finished coroutine does.
            return Err(thrown(args)?);
        };
        let outcome = step::throw(&steps, args);
        Self::after_step(slf, outcome)?.ok_or_else(|| PyStopIteration::new_err(()))
    }

    /// Closes the app's coroutine (the server gave up on it) and gives the permit back.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let steps = self.steps.lock().take();
        let outcome = match steps {
            Some(steps) => steps.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        self.release();
        outcome
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.core)?;
        visit.call(&self.scope)?;
        visit.call(&self.send)?;
        if let Some(steps) = self.steps.try_lock() {
            if let Some(steps) = steps.as_ref() {
                visit.call(steps)?;
            }
        }
        if let Some(held) = self.held.try_lock() {
            for message in held.iter() {
                visit.call(message)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.steps.lock().take();
        self.held.lock().clear();
    }
}

impl Exchange {
    /// What `get` answers, for the decision too (see [`crate::decide::lookup`]).
    pub(crate) fn fact<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyString>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        // The decision asks with interned keys: those are matched without reading them.
        if key.is(intern!(py, "PATH_INFO")) {
            self.path(py)
        } else if key.is(intern!(py, "REQUEST_METHOD")) {
            self.scope.bind(py).get_item(intern!(py, "method"))
        } else {
            self.lookup(py, &key.to_cow()?)
        }
    }

    /// `get` for the keys not matched by identity.
    fn lookup<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let scope = self.scope.bind(py);
        Ok(match key {
            "PATH_INFO" => self.path(py)?,
            "REQUEST_METHOD" => scope.get_item(intern!(py, "method"))?,
            "REMOTE_ADDR" => scope
                .get_item(intern!(py, "client"))?
                .filter(|client| !client.is_none())
                .and_then(|client| client.get_item(0).ok()),
            "QUERY_STRING" => scope
                .get_item(intern!(py, "query_string"))?
                .and_then(|query| {
                    let query = query.cast::<PyBytes>().ok()?;
                    let text: String = query.as_bytes().iter().map(|&b| char::from(b)).collect();
                    Some(PyString::new(py, &text).into_any())
                }),
            _ => match key.strip_prefix("HTTP_") {
                Some(name) if !name.is_empty() => {
                    let name = name.to_ascii_lowercase().replace('_', "-");
                    self.header(py, name.as_bytes())?
                }
                _ => None,
            },
        })
    }
}

/// The server's `send` of the last body when its first step did not finish it, awaited
/// through this: once it is done (or failed), the request's permit goes back.
#[pyclass(module = "tidegate._tidegate", frozen)]
pub struct LastBody {
    exchange: Py<Exchange>,
    steps: Mutex<Option<Py<PyAny>>>,
    /// What the first step (taken in `send_last`) yielded or raised: the app's first step of
    /// this awaitable hands it over.
    first: Mutex<Option<PyResult<Py<PyAny>>>>,
}

impl LastBody {
    fn after_step<'py>(&self, outcome: Step<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let error = match outcome {
            Step::Yielded(value) => return Ok(Some(value)),
            Step::Returned => None,
            Step::Raised(err) => Some(err),
        };
        self.steps.lock().take();
        self.exchange.get().release();
        error.map_or(Ok(None), Err)
    }

    fn resume<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if let Some(first) = self.first.lock().take() {
            return first.map(|value| Some(value.into_bound(py)));
        }
        let steps = self
            .steps
            .lock()
            .as_ref()
            .map(|steps| steps.bind(py).clone());
        let Some(steps) = steps else {
            return Ok(None);
        };
        self.after_step(step::send(&steps, value))
    }
}

#[pymethods]
impl LastBody {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.resume(py, &py.None().into_bound(py))
    }

    #[pyo3(signature = (value, /))]
    fn send<'py>(&self, py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.resume(py, value)?
            .ok_or_else(|| PyStopIteration::new_err(()))
    }

    #[pyo3(signature = (*args))]
    fn throw<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // What the first step yielded is dropped: the exception goes where the send waits.
        let first = self.first.lock().take();
        drop(first);
        let steps = self
            .steps
            .lock()
            .as_ref()
            .map(|steps| steps.bind(py).clone());
        let Some(steps) = steps else {
            return Err(thrown(args)?);
        };
        let outcome = step::throw(&steps, args);
        self.after_step(outcome)?
            .ok_or_else(|| PyStopIteration::new_err(()))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let first = self.first.lock().take();
        drop(first);
        let steps = self.steps.lock().take();
        self.exchange.get().release();
        match steps {
            Some(steps) => steps.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => Ok(()),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.exchange)?;
        if let Some(steps) = self.steps.try_lock() {
            if let Some(steps) = steps.as_ref() {
                visit.call(steps)?;
            }
        }
        if let Some(first) = self.first.try_lock() {
            if let Some(Ok(first)) = first.as_ref() {
                visit.call(first)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let steps = self.steps.lock().take();
        let first = self.first.lock().take();
        drop((steps, first));
    }
}

/// What the app's `send` returns when nothing is left to wait for (a last body the server
/// took at once, a message of a 500 held back): an awaitable that is over, one per middleware, shared by every request. It is a coroutine by
/// `collections.abc.Coroutine`'s rules (`__await__`, `send`, `throw`, `close`), so that
/// `asyncio.create_task` takes it as it takes the server's own `send`.
#[pyclass(module = "tidegate._tidegate", frozen)]
pub struct Sent;

#[pymethods]
impl Sent {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self) -> Option<()> {
        None
    }

    #[pyo3(signature = (_value, /))]
    fn send(&self, _value: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyStopIteration::new_err(()))
    }

    #[pyo3(signature = (*args))]
    fn throw(&self, args: &Bound<'_, PyTuple>) -> PyResult<()> {
        Err(thrown(args)?)
    }

    fn close(&self) {}
}

/// What a step can be sent into: a native coroutine as it is, any other awaitable through
/// its `__await__`.
fn steppable<'py>(awaitable: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if step::is_coroutine(awaitable) {
        Ok(awaitable.clone())
    } else {
        awaitable.call_method0(intern!(awaitable.py(), "__await__"))
    }
}

/// `value` as text, when it is a `str`.
fn text<'a>(value: &'a Bound<'_, PyAny>) -> Option<&'a str> {
    value.cast::<PyString>().ok()?.to_str().ok()
}

/// The exception `throw(type, value=None, traceback=None)` asks to raise, for an awaitable
/// that has nothing left to throw it into.
fn thrown(args: &Bound<'_, PyTuple>) -> PyResult<PyErr> {
    let error = args.get_item(0)?;
    Ok(if args.len() > 1 && !args.get_item(1)?.is_none() {
        PyErr::from_value(args.get_item(1)?)
    } else {
        PyErr::from_value(error)
    })
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // The safety net for an awaitable dropped unfinished and never closed.
        self.release();
    }
}
