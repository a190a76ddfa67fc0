//! `CircuitBreaker` and `CircuitOpenError` as Python sees them: argument checks, the clock,
//! running the protected call, the `with` form, listeners and logging, around the state
//! machine in `crate::breaker`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use pyo3::exceptions::{PyBaseException, PyException, PyRuntimeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple, PyType};
use pyo3::PyTraverseError;

use crate::breaker::{Breaker, Config, Outcome, Rejected, State, Ticket, Transition};
use crate::errors::{describe, int_beyond_float, type_name, whole_number, ArgError};

pyo3::create_exception!(
    tidegate._tidegate,
    CircuitOpenError,
    PyException,
    "A call refused because its circuit breaker is open (or half-open with every probe slot \
     taken). `breaker` is the breaker; `retry_after` the seconds until a probe is allowed."
);

/// Gives `CircuitOpenError` class-level defaults so one raised by hand still answers
/// `breaker` (None) and `retry_after` (0.0).
pub fn prepare_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let error = m.py().get_type::<CircuitOpenError>();
    error.setattr("breaker", m.py().None())?;
    error.setattr("retry_after", 0.0)?;
    Ok(())
}

/// An int >= 1 that fits in a u32 (a bool is not an int here).
fn count(param: &'static str, value: &Bound<'_, PyAny>) -> Result<u32, ArgError> {
    whole_number(param, value)?.at_least(param, 1)
}

/// A real number; range checks happen in `Config::validate`.
fn number(param: &'static str, value: &Bound<'_, PyAny>) -> Result<f64, ArgError> {
    if value.is_instance_of::<PyBool>() || value.is_instance_of::<PyString>() {
        return Err(ArgError::type_(
            param,
            format!("must be a number, got {}", describe(value)),
        ));
    }
    if let Some(huge) = int_beyond_float(value) {
        return Err(ArgError::value(
            param,
            format!("must be a finite number, got {huge}"),
        ));
    }
    value
        .extract::<f64>()
        .map_err(|_| ArgError::type_(param, format!("must be a number, got {}", type_name(value))))
}

fn optional_number(param: &'static str, value: &Bound<'_, PyAny>) -> Result<Option<f64>, ArgError> {
    if value.is_none() {
        return Ok(None);
    }
    number(param, value).map(Some)
}

fn optional_callable(
    param: &'static str,
    value: &Bound<'_, PyAny>,
) -> Result<Option<Py<PyAny>>, ArgError> {
    if value.is_none() {
        return Ok(None);
    }
    if !value.is_callable() {
        return Err(ArgError::type_(
            param,
            format!("must be callable or None, got {}", describe(value)),
        ));
    }
    Ok(Some(value.clone().unbind()))
}

/// An exception type or a tuple of them (as `except` takes them); `None` when nothing is excluded.
fn exception_types(value: &Bound<'_, PyAny>) -> Result<Option<Py<PyTuple>>, ArgError> {
    let py = value.py();
    if value.is_none() {
        return Ok(None);
    }
    let items: Vec<Bound<'_, PyAny>> = if value.is_instance_of::<PyType>() {
        vec![value.clone()]
    } else if let Ok(types) = value.cast::<PyTuple>() {
        types.iter().collect()
    } else {
        return Err(ArgError::type_(
            "exclude",
            format!(
                "must be an exception type or a tuple of them, got {}",
                describe(value)
            ),
        ));
    };
    for item in &items {
        let is_exception = item
            .cast::<PyType>()
            .is_ok_and(|t| t.is_subclass_of::<PyBaseException>().unwrap_or(false));
        if !is_exception {
            return Err(ArgError::type_(
                "exclude",
                format!("{} is not an exception type", describe(item)),
            ));
        }
    }
    if items.is_empty() {
        return Ok(None);
    }
    PyTuple::new(py, items)
        .map(|t| Some(t.unbind()))
        .map_err(|_| ArgError::type_("exclude", "could not be made into a tuple"))
}

/// One extractor per parameter, so each error names its parameter.
macro_rules! extractor {
    ($fn:ident -> $ty:ty = $how:ident($param:literal)) => {
        fn $fn(value: &Bound<'_, PyAny>) -> PyResult<$ty> {
            Ok($how($param, value)?)
        }
    };
}

extractor!(failure_threshold -> u32 = count("failure_threshold"));
extractor!(half_open_max_calls -> u32 = count("half_open_max_calls"));
extractor!(success_threshold -> u32 = count("success_threshold"));
extractor!(minimum_calls -> u32 = count("minimum_calls"));
extractor!(reset_timeout -> f64 = number("reset_timeout"));
extractor!(window -> f64 = number("window"));
extractor!(backoff -> f64 = number("backoff"));
extractor!(failure_rate -> Option<f64> = optional_number("failure_rate"));
extractor!(max_reset_timeout -> Option<f64> = optional_number("max_reset_timeout"));
extractor!(probe_timeout -> Option<f64> = optional_number("probe_timeout"));
extractor!(fallback -> Option<Py<PyAny>> = optional_callable("fallback"));
extractor!(clock -> Option<Py<PyAny>> = optional_callable("clock"));

fn exclude(value: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyTuple>>> {
    Ok(exception_types(value)?)
}

fn name(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let Ok(text) = value.cast::<PyString>() else {
        return Err(
            ArgError::type_("name", format!("must be a str, got {}", type_name(value))).into(),
        );
    };
    let text: String = text.extract().map_err(|_| {
        ArgError::value(
            "name",
            format!(
                "must be valid text (no lone surrogates), got {}",
                describe(value)
            ),
        )
    })?;
    if text.is_empty() {
        return Err(ArgError::value("name", "must not be empty").into());
    }
    Ok(text)
}

/// Seconds on the process's own monotonic scale.
fn monotonic() -> f64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn read_clock(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    let seconds = value
        .extract::<f64>()
        .ok()
        .filter(|_| !value.is_instance_of::<PyBool>() && !value.is_instance_of::<PyString>());
    match seconds {
        Some(s) if s.is_finite() => Ok(s),
        Some(s) => Err(ArgError::value(
            "clock",
            format!("must return a finite number of seconds, got {s}"),
        )
        .into()),
        None => Err(ArgError::type_(
            "clock",
            format!("must return a number of seconds, got {}", describe(value)),
        )
        .into()),
    }
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            Ok(py
                .import("logging")?
                .call_method1("getLogger", ("tidegate",))?
                .unbind())
        })
        .map(|logger| logger.bind(py))
}

/// The tickets of the `with` blocks open in the current context (thread, greenlet or task).
fn active_tickets(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static ACTIVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    ACTIVE
        .get_or_try_init(py, || {
            let kwargs = PyDict::new(py);
            kwargs.set_item("default", PyTuple::empty(py))?;
            Ok(py
                .import("contextvars")?
                .getattr("ContextVar")?
                .call(("tidegate_breaker_calls",), Some(&kwargs))?
                .unbind())
        })
        .map(|var| var.bind(py))
}

/// The admission a `with` block holds. Settled exactly once: by `__exit__`, or, if it is
/// garbage-collected first, as an ignored outcome so a probe slot can never leak.
#[pyclass(name = "_Ticket", module = "tidegate._tidegate", frozen)]
pub struct TicketPy {
    core: Arc<Breaker>,
    ticket: Ticket,
    started: f64,
    settled: AtomicBool,
}

impl TicketPy {
    fn take(&self) -> Option<Ticket> {
        (!self.settled.swap(true, Ordering::AcqRel)).then_some(self.ticket)
    }
}

impl Drop for TicketPy {
    fn drop(&mut self) {
        if let Some(ticket) = self.take() {
            self.core.settle(ticket, Outcome::Ignored, 0.0);
        }
    }
}

/// An admission `call` holds while its function runs. Dropped unsettled (a listener raised
/// as the call was admitted, or anything else ended `call` early) it settles as ignored, so
/// no way out of `call` can keep a probe slot.
struct Admitted<'a> {
    core: &'a Breaker,
    ticket: Option<Ticket>,
}

impl Admitted<'_> {
    fn take(mut self) -> Option<Ticket> {
        self.ticket.take()
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            // An ignored outcome never changes the state, so there is nothing to announce.
            self.core.settle(ticket, Outcome::Ignored, 0.0);
        }
    }
}

/// A circuit breaker around calls to one dependency.
#[pyclass(
    name = "CircuitBreaker",
    module = "tidegate._tidegate",
    frozen,
    subclass,
    weakref
)]
pub struct BreakerPy {
    core: Arc<Breaker>,
    name: String,
    exclude: Option<Py<PyTuple>>,
    fallback: Option<Py<PyAny>>,
    clock: Option<Py<PyAny>>,
    listeners: Mutex<Vec<Py<PyAny>>>,
}

impl BreakerPy {
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        match &self.clock {
            None => Ok(monotonic()),
            Some(clock) => read_clock(&clock.bind(py).call0()?),
        }
    }

    /// The time a call ended; a clock failing now must not lose the call's own result.
    fn end_time(slf: &Bound<'_, Self>, started: f64) -> f64 {
        slf.get().now(slf.py()).unwrap_or_else(|err| {
            err.write_unraisable(slf.py(), Some(slf.as_any()));
            started
        })
    }

    fn classify(&self, py: Python<'_>, error: &Bound<'_, PyAny>) -> Outcome {
        if !error.is_instance_of::<PyException>() {
            return Outcome::Ignored;
        }
        match &self.exclude {
            Some(types) if error.is_instance(types.bind(py)).unwrap_or(false) => Outcome::Ignored,
            _ => Outcome::Failure,
        }
    }

    fn open_error(slf: &Bound<'_, Self>, rejected: Rejected) -> PyErr {
        let name = &slf.get().name;
        let message = match rejected.state {
            State::HalfOpen => {
                format!("circuit breaker '{name}' is half-open and its probe calls are all taken")
            }
            _ => format!(
                "circuit breaker '{name}' is open; retry in {:.3}s",
                rejected.retry_after
            ),
        };
        let err = CircuitOpenError::new_err(message);
        let value = err.value(slf.py());
        if let Err(failed) = value
            .setattr("breaker", slf)
            .and_then(|()| value.setattr("retry_after", rejected.retry_after))
        {
            return failed;
        }
        err
    }

    /// Logs a transition and tells the listeners, with no lock held. A listener raising an
    /// `Exception` is logged and skipped; anything else (KeyboardInterrupt) propagates.
    fn announce(slf: &Bound<'_, Self>, transition: Option<Transition>) -> PyResult<()> {
        let Some(transition) = transition else {
            return Ok(());
        };
        let py = slf.py();
        let this = slf.get();
        let level = if transition.to == State::Open {
            "warning"
        } else {
            "info"
        };
        let logged = logger(py).and_then(|logger| {
            logger.call_method1(
                level,
                ("circuit breaker %r: %s", &this.name, transition.to_string()),
            )
        });
        if let Err(err) = logged {
            err.write_unraisable(py, Some(slf.as_any()));
        }
        let listeners: Vec<Py<PyAny>> = this
            .listeners
            .lock()
            .iter()
            .map(|listener| listener.clone_ref(py))
            .collect();
        for listener in listeners {
            let listener = listener.bind(py);
            let called = listener.call1((slf, transition.from.as_str(), transition.to.as_str()));
            let Err(err) = called else { continue };
            if !err.is_instance_of::<PyException>(py) {
                return Err(err);
            }
            let kwargs = PyDict::new(py);
            kwargs.set_item("exc_info", err.value(py))?;
            let logged = logger(py).and_then(|logger| {
                logger.call_method(
                    "error",
                    (
                        "circuit breaker %r: listener %r raised",
                        &this.name,
                        listener,
                    ),
                    Some(&kwargs),
                )
            });
            if let Err(err) = logged {
                err.write_unraisable(py, Some(slf.as_any()));
            }
        }
        Ok(())
    }

    fn settle(
        slf: &Bound<'_, Self>,
        ticket: Ticket,
        outcome: Outcome,
        started: f64,
    ) -> PyResult<()> {
        let end = Self::end_time(slf, started);
        let transition = slf.get().core.settle(ticket, outcome, end);
        Self::announce(slf, transition)
    }
}

#[pymethods]
impl BreakerPy {
    #[new]
    #[pyo3(signature = (
        name,
        *,
        failure_threshold = 5,
        reset_timeout = 30.0,
        half_open_max_calls = 1,
        probe_timeout = None,
        success_threshold = 1,
        failure_rate = None,
        window = 60.0,
        minimum_calls = 10,
        max_reset_timeout = None,
        backoff = 2.0,
        exclude = None,
        fallback = None,
        clock = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        #[pyo3(from_py_with = name)] name: String,
        #[pyo3(from_py_with = failure_threshold)] failure_threshold: u32,
        #[pyo3(from_py_with = reset_timeout)] reset_timeout: f64,
        #[pyo3(from_py_with = half_open_max_calls)] half_open_max_calls: u32,
        #[pyo3(from_py_with = probe_timeout)] probe_timeout: Option<f64>,
        #[pyo3(from_py_with = success_threshold)] success_threshold: u32,
        #[pyo3(from_py_with = failure_rate)] failure_rate: Option<f64>,
        #[pyo3(from_py_with = window)] window: f64,
        #[pyo3(from_py_with = minimum_calls)] minimum_calls: u32,
        #[pyo3(from_py_with = max_reset_timeout)] max_reset_timeout: Option<f64>,
        #[pyo3(from_py_with = backoff)] backoff: f64,
        #[pyo3(from_py_with = exclude)] exclude: Option<Py<PyTuple>>,
        #[pyo3(from_py_with = fallback)] fallback: Option<Py<PyAny>>,
        #[pyo3(from_py_with = clock)] clock: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let config = Config {
            failure_threshold,
            reset_timeout,
            half_open_max_calls,
            probe_timeout,
            success_threshold,
            failure_rate,
            window,
            minimum_calls,
            max_reset_timeout,
            backoff,
        };
        Ok(Self {
            core: Arc::new(Breaker::new(config)?),
            name,
            exclude,
            fallback,
            clock,
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// Runs `func(*args, **kwargs)` through the breaker.
    #[pyo3(signature = (func, /, *args, **kwargs))]
    fn call<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !func.is_callable() {
            return Err(ArgError::type_(
                "func",
                format!("must be callable, got {}", describe(func)),
            )
            .into());
        }
        let py = slf.py();
        let this = slf.get();
        let started = this.now(py)?;
        let (admission, transition) = this.core.admit(started);
        let admitted = admission.map(|ticket| Admitted {
            core: &this.core,
            ticket: Some(ticket),
        });
        // A listener that raises past the logging (KeyboardInterrupt) ends the call here;
        // `admitted` gives its slot back as it goes.
        Self::announce(slf, transition)?;
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(rejected) => {
                return match &this.fallback {
                    Some(fallback) => fallback.bind(py).call(args, kwargs),
                    None => Err(Self::open_error(slf, rejected)),
                }
            }
        };
        // No lock is held here: calls through one breaker run side by side.
        let result = func.call(args, kwargs);
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(err) => this.classify(py, err.value(py)),
        };
        if let Some(ticket) = admitted.take() {
            Self::settle(slf, ticket, outcome, started)?;
        }
        result
    }

    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        let py = slf.py();
        let this = slf.get();
        let now = this.now(py)?;
        let (admission, transition) = this.core.admit(now);
        let ticket = admission.map(|ticket| TicketPy {
            core: this.core.clone(),
            ticket,
            started: now,
            settled: AtomicBool::new(false),
        });
        Self::announce(slf, transition)?;
        let ticket = Bound::new(
            py,
            ticket.map_err(|rejected| Self::open_error(slf, rejected))?,
        )?;
        let active = active_tickets(py)?;
        let stack = active.call_method0("get")?;
        let stack = stack.cast::<PyTuple>()?;
        let pushed: Vec<Bound<'py, PyAny>> = stack.iter().chain([ticket.into_any()]).collect();
        let pushed = PyTuple::new(py, pushed)?;
        active.call_method1("set", (pushed,))?;
        Ok(slf.clone())
    }

    #[pyo3(signature = (_exc_type, exc, _traceback, /))]
    fn __exit__(
        slf: &Bound<'_, Self>,
        _exc_type: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
        _traceback: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let active = active_tickets(py)?;
        let stack = active.call_method0("get")?;
        let stack = stack.cast::<PyTuple>()?;
        let mine = stack.iter().enumerate().rev().find_map(|(i, item)| {
            let ticket = item.cast_into::<TicketPy>().ok()?;
            Arc::ptr_eq(&ticket.get().core, &this.core).then_some((i, ticket))
        });
        let Some((index, ticket)) = mine else {
            return Err(PyRuntimeError::new_err(format!(
                "circuit breaker '{}': __exit__ without a matching __enter__ in this context",
                this.name
            )));
        };
        let rest: Vec<Bound<'_, PyAny>> = stack
            .iter()
            .enumerate()
            .filter_map(|(i, item)| (i != index).then_some(item))
            .collect();
        active.call_method1("set", (PyTuple::new(py, rest)?,))?;
        let outcome = if exc.is_none() {
            Outcome::Success
        } else {
            this.classify(py, exc)
        };
        let ticket = ticket.get();
        if let Some(taken) = ticket.take() {
            Self::settle(slf, taken, outcome, ticket.started)?;
        }
        Ok(false)
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// "closed", "open" or "half_open"; reading it takes a due open -> half-open step.
    #[getter]
    fn state(slf: &Bound<'_, Self>) -> PyResult<&'static str> {
        let this = slf.get();
        let (state, transition) = this.core.state(this.now(slf.py())?);
        Self::announce(slf, transition)?;
        Ok(state.as_str())
    }

    #[getter]
    fn retry_after(&self, py: Python<'_>) -> PyResult<f64> {
        Ok(self.core.retry_after(self.now(py)?))
    }

    #[getter]
    fn failure_count(&self) -> u32 {
        self.core.stats().failure_count
    }

    #[getter]
    fn total_failures(&self) -> u64 {
        self.core.stats().total_failures
    }

    #[getter]
    fn total_successes(&self) -> u64 {
        self.core.stats().total_successes
    }

    #[getter]
    fn rejected(&self) -> u64 {
        self.core.stats().rejected
    }

    #[getter]
    fn failure_threshold(&self) -> u32 {
        self.core.config().failure_threshold
    }

    #[getter]
    fn reset_timeout(&self) -> f64 {
        self.core.config().reset_timeout
    }

    #[getter]
    fn half_open_max_calls(&self) -> u32 {
        self.core.config().half_open_max_calls
    }

    /// The bound on a probe in seconds, the default worked out.
    #[getter]
    fn probe_timeout(&self) -> f64 {
        self.core.config().probe_timeout()
    }

    #[getter]
    fn success_threshold(&self) -> u32 {
        self.core.config().success_threshold
    }

    #[getter]
    fn failure_rate(&self) -> Option<f64> {
        self.core.config().failure_rate
    }

    #[getter]
    fn window(&self) -> f64 {
        self.core.config().window
    }

    #[getter]
    fn minimum_calls(&self) -> u32 {
        self.core.config().minimum_calls
    }

    #[getter]
    fn max_reset_timeout(&self) -> Option<f64> {
        self.core.config().max_reset_timeout
    }

    #[getter]
    fn backoff(&self) -> f64 {
        self.core.config().backoff
    }

    #[getter]
    fn exclude<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        match &self.exclude {
            Some(types) => types.bind(py).clone(),
            None => PyTuple::empty(py),
        }
    }

    #[getter]
    fn fallback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.fallback.as_ref().map(|f| f.clone_ref(py))
    }

    /// Opens by hand (a half-open breaker re-trips; an open one restarts its timer).
    fn open(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let transition = this.core.trip(this.now(slf.py())?);
        Self::announce(slf, transition)
    }

    /// Closes by hand and forgets past failures.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let transition = this.core.reset(this.now(slf.py())?);
        Self::announce(slf, transition)
    }

    fn reset(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close(slf)
    }

    #[pyo3(signature = (listener, /))]
    fn add_listener<'py>(&self, listener: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if !listener.is_callable() {
            return Err(ArgError::type_(
                "listener",
                format!("must be callable, got {}", describe(listener)),
            )
            .into());
        }
        self.listeners.lock().push(listener.clone().unbind());
        Ok(listener.clone())
    }

    #[pyo3(signature = (listener, /))]
    fn remove_listener(&self, listener: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = listener.py();
        let registered: Vec<Py<PyAny>> = self
            .listeners
            .lock()
            .iter()
            .map(|l| l.clone_ref(py))
            .collect();
        // Compared with `==` outside the lock: bound methods are equal, never identical.
        let found = registered
            .iter()
            .position(|l| l.bind(py).eq(listener).unwrap_or(false));
        let removed = found.is_some_and(|index| {
            let mut listeners = self.listeners.lock();
            let still_there = listeners.iter().position(|l| l.is(&registered[index]));
            still_there.map(|i| listeners.remove(i)).is_some()
        });
        if !removed {
            return Err(PyValueError::new_err(format!(
                "listener: not registered: {}",
                describe(listener)
            )));
        }
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let state = match self.now(py) {
            Ok(now) => self.core.peek_state(now),
            Err(_) => self.core.stats().state,
        };
        let stats = self.core.stats();
        format!(
            "CircuitBreaker(name='{}', state='{}', failure_count={}, failure_threshold={})",
            self.name,
            state,
            stats.failure_count,
            self.core.config().failure_threshold
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.exclude)?;
        visit.call(&self.fallback)?;
        visit.call(&self.clock)?;
        if let Some(listeners) = self.listeners.try_lock() {
            for listener in listeners.iter() {
                visit.call(listener)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.listeners.lock().clear();
    }
}
