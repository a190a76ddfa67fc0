//! The circuit breaker's state machine as Python sees it: argument checks, the clock, running
//! the protected call, around `crate::breaker`. Logging, listeners and the `with` form's
//! context live in `tidegate.breaker`, which subclasses this class: when a call, a state read
//! or a manual change moves the state, the wrapper calls `self._announce(old, new, why)`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyBaseException, PyException};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple, PyType};
use pyo3::{intern, PyTraverseError};

use crate::breaker::{
    Breaker, Config, Fleet, FleetConfig, Outcome, Rejected, State, Ticket, Transition,
};
pub use crate::errors::CircuitOpenError;
use crate::errors::{circuit_open, describe, int_beyond_float, type_name, whole_number, ArgError};
use crate::metrics;

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

/// A store URI or None.
fn store(value: &Bound<'_, PyAny>) -> PyResult<Option<crate::store::Uri>> {
    if value.is_none() {
        return Ok(None);
    }
    let Ok(text) = value.cast::<PyString>() else {
        return Err(ArgError::type_(
            "store",
            format!(
                "must be a store URI (redis:// or unix://) or None, got {}",
                type_name(value)
            ),
        )
        .into());
    };
    let text: String = text.extract().map_err(|_| {
        ArgError::value(
            "store",
            "must be valid text (no lone surrogates)".to_owned(),
        )
    })?;
    Ok(Some(crate::store::Uri::parse("store", &text)?))
}

/// Seconds between two looks at the store: a finite number >= 0 (10 ms at least in effect).
fn poll_interval(value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let seconds = number("poll_interval", value)?;
    Ok(crate::maintenance::poll_interval_of(seconds)?)
}

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

/// The admission a `with` block holds (`_enter` gives it, `_exit` takes it back). Settled
/// exactly once: by `_exit`, or, if it is garbage-collected first, as an ignored outcome so a
/// probe slot can never leak.
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
    /// The store the breaker shares its state through, and the threads that do it.
    fleet: Option<Fleet>,
    poll_interval: Duration,
    /// Its entry in `tidegate_breaker_state` and `tidegate_breaker_calls_total`.
    metrics: Arc<metrics::Named>,
}

/// A breaker state as the metrics name it.
fn metrics_state(state: State) -> metrics::BreakerState {
    match state {
        State::Closed => metrics::BreakerState::Closed,
        State::Open => metrics::BreakerState::Open,
        State::HalfOpen => metrics::BreakerState::HalfOpen,
    }
}

/// A settled call as the metrics count it.
fn metrics_call(outcome: Outcome) -> metrics::CallOutcome {
    match outcome {
        Outcome::Success => metrics::CallOutcome::Success,
        Outcome::Failure => metrics::CallOutcome::Failure,
        Outcome::Ignored => metrics::CallOutcome::Ignored,
    }
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

    /// Tells the store thread what an admission needs from it: a probe reservation when a
    /// half-open call found none; and restarts it after a fork.
    fn after_admit(&self, admission: &Result<Ticket, Rejected>) {
        if let Some(fleet) = &self.fleet {
            fleet.watch();
            if matches!(admission, Err(r) if r.state == State::HalfOpen) {
                fleet.wants_probe();
            }
        }
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
        slf.get().metrics.count_call(metrics::CallOutcome::Rejected);
        let half_open = rejected.state == State::HalfOpen;
        circuit_open(
            slf.as_any(),
            &slf.get().name,
            half_open,
            rejected.retry_after,
        )
    }

    /// Hands a transition to `self._announce(old, new, why)`, with no lock held. Whatever
    /// that raises propagates (`tidegate.CircuitBreaker` lets only a `BaseException` that is
    /// not an `Exception`, such as KeyboardInterrupt, through).
    fn announce(slf: &Bound<'_, Self>, transition: Option<Transition>) -> PyResult<()> {
        let Some(transition) = transition else {
            return Ok(());
        };
        if let Some(fleet) = &slf.get().fleet {
            fleet.changed();
        }
        slf.get()
            .metrics
            .set_breaker_state(metrics_state(transition.to));
        let py = slf.py();
        slf.call_method1(
            intern!(py, "_announce"),
            (
                transition.from.as_str(),
                transition.to.as_str(),
                transition.to_string(),
            ),
        )?;
        Ok(())
    }

    fn settle(
        slf: &Bound<'_, Self>,
        ticket: Ticket,
        outcome: Outcome,
        started: f64,
    ) -> PyResult<()> {
        let end = Self::end_time(slf, started);
        slf.get().metrics.count_call(metrics_call(outcome));
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
        store = None,
        poll_interval = Duration::from_secs(1),
    ), text_signature = "(name, *, failure_threshold=5, reset_timeout=30.0, half_open_max_calls=1, probe_timeout=None, success_threshold=1, failure_rate=None, window=60.0, minimum_calls=10, max_reset_timeout=None, backoff=2.0, exclude=None, fallback=None, clock=None, store=None, poll_interval=1.0)")]
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
        #[pyo3(from_py_with = store)] store: Option<crate::store::Uri>,
        #[pyo3(from_py_with = poll_interval)] poll_interval: Duration,
    ) -> PyResult<Self> {
        if clock.is_some() && store.is_some() {
            return Err(ArgError::value(
                "clock",
                "cannot be combined with store= (a fleet shares the system clock)",
            )
            .into());
        }
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
        let (core, fleet) = match store {
            None => (Arc::new(Breaker::new(config)?), None),
            Some(uri) => {
                let core = Arc::new(Breaker::shared(config)?);
                let fleet = FleetConfig {
                    uri,
                    name: name.clone(),
                    poll_interval,
                };
                let fleet = Fleet::start(fleet, &core, Arc::new(crate::maintenance::log_warning));
                (core, Some(fleet))
            }
        };
        let entry = metrics::breaker(&name);
        entry.set_breaker_state(metrics::BreakerState::Closed);
        Ok(Self {
            core,
            name,
            exclude,
            fallback,
            clock,
            fleet,
            poll_interval,
            metrics: entry,
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
        this.after_admit(&admission);
        let admitted = admission.map(|ticket| Admitted {
            core: &this.core,
            ticket: Some(ticket),
        });
        // `_announce` raising (a listener's KeyboardInterrupt) ends the call here;
        // `admitted` gives its slot back as it goes.
        Self::announce(slf, transition)?;
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(rejected) => {
                return match &this.fallback {
                    Some(fallback) => {
                        this.metrics.count_call(metrics::CallOutcome::Rejected);
                        fallback.bind(py).call(args, kwargs)
                    }
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

    /// Admits a `with` block: its admission, for `_exit`, or `CircuitOpenError`.
    fn _enter(slf: &Bound<'_, Self>) -> PyResult<Py<TicketPy>> {
        let py = slf.py();
        let this = slf.get();
        let now = this.now(py)?;
        let (admission, transition) = this.core.admit(now);
        this.after_admit(&admission);
        let ticket = admission.map(|ticket| TicketPy {
            core: this.core.clone(),
            ticket,
            started: now,
            settled: AtomicBool::new(false),
        });
        // `_announce` raising drops `ticket`, which gives its slot back.
        Self::announce(slf, transition)?;
        Py::new(
            py,
            ticket.map_err(|rejected| Self::open_error(slf, rejected))?,
        )
    }

    /// Settles what `_enter` admitted: a success when `exc` is None, else as `call` counts it.
    #[pyo3(signature = (ticket, exc, /))]
    fn _exit(
        slf: &Bound<'_, Self>,
        ticket: &Bound<'_, TicketPy>,
        exc: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let ticket = ticket.get();
        if !Arc::ptr_eq(&ticket.core, &this.core) {
            return Err(ArgError::value("ticket", "was not admitted by this breaker").into());
        }
        let outcome = if exc.is_none() {
            Outcome::Success
        } else {
            this.classify(py, exc)
        };
        if let Some(taken) = ticket.take() {
            Self::settle(slf, taken, outcome, ticket.started)?;
        }
        Ok(())
    }

    /// Called after every transition with the old and new state and why it happened. Does
    /// nothing here; `tidegate.CircuitBreaker` logs it and tells its listeners.
    #[pyo3(signature = (_old, _new, _why, /))]
    fn _announce(&self, _old: &str, _new: &str, _why: &str) {}

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

    /// The store URI (its password hidden), or None for a breaker of this process alone.
    #[getter]
    fn store(&self) -> Option<String> {
        self.fleet.as_ref().map(|f| f.config().uri.to_string())
    }

    #[getter]
    fn poll_interval(&self) -> f64 {
        self.poll_interval.as_secs_f64()
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
        if let Some(fleet) = &this.fleet {
            // Even a restarted open period (no transition) is news for the fleet.
            fleet.changed();
        }
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
        Ok(())
    }
}
