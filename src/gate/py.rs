//! The Python face of the gates: `CapacityGate`, `AdaptiveGate` and `Permit`, argument
//! conversion around the plain `Gate`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

use super::adaptive::{Algorithm, LimiterConfig};
use super::{deadline_after, extract_timeout, Gate, Ticket, Wait};
use crate::errors::{int_beyond_float, whole_number, ArgError, WholeNumber};

/// Reads a Python `limit` argument: an int (not a bool) that is at least 1.
pub fn extract_limit(value: &Bound<'_, PyAny>) -> Result<usize, ArgError> {
    whole_number("limit", value)?.at_least("limit", 1)
}

/// A `timeout` argument as a number of seconds (`None` stays `None`); a bool or str is not one.
fn timeout_seconds(value: Option<&Bound<'_, PyAny>>) -> Result<Option<f64>, ArgError> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if let Some(huge) = int_beyond_float(value) {
        // Too long for a float is too long for the clock too: no limit, as `None` is.
        return match huge {
            WholeNumber::Huge { negative: true, .. } => Err(ArgError::value(
                "timeout",
                format!("must be a finite number of seconds >= 0, got {huge}"),
            )),
            _ => Ok(Some(f64::MAX)),
        };
    }
    let number = if value.is_instance_of::<PyBool>() || value.is_instance_of::<PyString>() {
        None
    } else {
        value.extract::<f64>().ok()
    };
    match number {
        Some(seconds) => Ok(Some(seconds)),
        None => {
            let kind = value
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "object".to_owned());
            Err(ArgError::type_(
                "timeout",
                format!("must be a number of seconds or None, got {kind}"),
            ))
        }
    }
}

/// A concurrency limit that sheds excess work at once.
#[pyclass(name = "CapacityGate", module = "tidegate._tidegate", frozen)]
pub struct GatePy {
    pub gate: Arc<Gate>,
}

#[pymethods]
impl GatePy {
    #[new]
    fn new(limit: &Bound<'_, PyAny>) -> PyResult<Self> {
        let limit = extract_limit(limit)?;
        Ok(Self {
            gate: Arc::new(Gate::new(limit)?),
        })
    }

    #[getter]
    fn limit(&self) -> usize {
        self.gate.limit()
    }

    #[setter]
    fn set_limit(&self, limit: &Bound<'_, PyAny>) -> PyResult<()> {
        let limit = extract_limit(limit)?;
        Ok(self.gate.set_limit(limit)?)
    }

    #[getter]
    fn in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    #[getter]
    fn peak(&self) -> usize {
        self.gate.peak()
    }

    #[getter]
    fn admitted(&self) -> u64 {
        self.gate.admitted()
    }

    #[getter]
    fn rejected(&self) -> u64 {
        self.gate.rejected()
    }

    fn try_acquire(&self) -> Option<PermitPy> {
        try_acquire(&self.gate)
    }

    #[pyo3(signature = (timeout=None))]
    fn acquire(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<PermitPy>> {
        acquire(py, &self.gate, timeout)
    }

    fn __repr__(&self) -> String {
        format!(
            "CapacityGate(limit={}, in_flight={}, peak={}, admitted={}, rejected={})",
            self.gate.limit(),
            self.gate.in_flight(),
            self.gate.peak(),
            self.gate.admitted(),
            self.gate.rejected()
        )
    }
}

fn try_acquire(gate: &Arc<Gate>) -> Option<PermitPy> {
    gate.try_acquire()
        .map(|ticket| PermitPy::new(gate.clone(), ticket))
}

fn acquire(
    py: Python<'_>,
    gate: &Arc<Gate>,
    timeout: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<PermitPy>> {
    let timeout = extract_timeout(timeout_seconds(timeout)?)?;
    let deadline = deadline_after(Instant::now(), timeout);
    loop {
        match py.detach(|| gate.wait_slice(deadline)) {
            Wait::Admitted(ticket) => return Ok(Some(PermitPy::new(gate.clone(), ticket))),
            Wait::TimedOut => {
                gate.count_rejection();
                return Ok(None);
            }
            Wait::Again => {
                if let Err(err) = py.check_signals() {
                    gate.count_rejection();
                    return Err(err);
                }
            }
        }
    }
}

/// A limit of a keyword argument of `AdaptiveGate`: an int (not a bool) that is at least 1.
fn limit_arg(name: &'static str, value: &Bound<'_, PyAny>) -> Result<usize, ArgError> {
    whole_number(name, value)?.at_least(name, 1)
}

/// A concurrency limit that sets itself from the latency of the requests it admits.
///
/// Each permit is one sample, from admission to release. The limiter (Gradient2 by default,
/// or AIMD or Vegas, after Netflix's concurrency-limits) keeps the limit within
/// `[min_limit, max_limit]`; see the README for the formulas and defaults.
#[pyclass(name = "AdaptiveGate", module = "tidegate._tidegate", frozen)]
pub struct AdaptiveGatePy {
    pub gate: Arc<Gate>,
    algorithm: &'static str,
    min_limit: usize,
    max_limit: usize,
}

#[pymethods]
impl AdaptiveGatePy {
    #[new]
    #[pyo3(
        signature = (*, initial=None, min_limit=None, max_limit=None, algorithm=None),
        text_signature = "(*, initial=20, min_limit=1, max_limit=1000, algorithm='gradient2')"
    )]
    fn new(
        initial: Option<&Bound<'_, PyAny>>,
        min_limit: Option<&Bound<'_, PyAny>>,
        max_limit: Option<&Bound<'_, PyAny>>,
        algorithm: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let defaults = LimiterConfig::default();
        let read = |name, value: Option<&Bound<'_, PyAny>>, default| match value {
            Some(value) => limit_arg(name, value),
            None => Ok(default),
        };
        let initial = read("initial", initial, defaults.initial_limit)?;
        let min_limit = read("min_limit", min_limit, defaults.min_limit)?;
        let max_limit = read("max_limit", max_limit, defaults.max_limit)?;
        let algorithm = match algorithm {
            None => defaults.algorithm.clone(),
            Some(value) => {
                let Ok(name) = value.cast::<PyString>() else {
                    return Err(ArgError::type_(
                        "algorithm",
                        format!(
                            "must be 'gradient2', 'aimd' or 'vegas', got {}",
                            value.repr().map(|r| r.to_string()).unwrap_or_default()
                        ),
                    )
                    .into());
                };
                Algorithm::named(&name.to_cow()?)?
            }
        };
        let algorithm_name = algorithm.name();
        let config = LimiterConfig {
            initial_limit: initial,
            min_limit,
            max_limit,
            algorithm,
            seed: seed(),
            ..defaults
        };
        Ok(Self {
            gate: Arc::new(Gate::adaptive(config)?),
            algorithm: algorithm_name,
            min_limit,
            max_limit,
        })
    }

    /// The limit in force now (the limiter sets it; it cannot be set by hand).
    #[getter]
    fn limit(&self) -> usize {
        self.gate.limit()
    }

    #[getter]
    fn min_limit(&self) -> usize {
        self.min_limit
    }

    /// The no-load latency (seconds) the algorithm compares with, once it has one.
    #[getter]
    fn baseline(&self) -> Option<f64> {
        self.gate.with_limiter(|l| l.baseline()).flatten()
    }

    /// Whether the limit is held low right now to measure the baseline.
    #[getter]
    fn probing(&self) -> bool {
        self.gate.with_limiter(|l| l.probing()).unwrap_or(false)
    }

    #[getter]
    fn max_limit(&self) -> usize {
        self.max_limit
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.algorithm
    }

    #[getter]
    fn in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    #[getter]
    fn peak(&self) -> usize {
        self.gate.peak()
    }

    #[getter]
    fn admitted(&self) -> u64 {
        self.gate.admitted()
    }

    #[getter]
    fn rejected(&self) -> u64 {
        self.gate.rejected()
    }

    fn try_acquire(&self) -> Option<PermitPy> {
        try_acquire(&self.gate)
    }

    #[pyo3(signature = (timeout=None))]
    fn acquire(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<PermitPy>> {
        acquire(py, &self.gate, timeout)
    }

    fn __repr__(&self) -> String {
        format!(
            "AdaptiveGate(algorithm={:?}, limit={}, min_limit={}, max_limit={}, in_flight={}, \
             admitted={}, rejected={})",
            self.algorithm,
            self.gate.limit(),
            self.min_limit,
            self.max_limit,
            self.gate.in_flight(),
            self.gate.admitted(),
            self.gate.rejected()
        )
    }
}

/// A seed for the probes' jitter that differs between processes (Gunicorn's workers start
/// together and must not probe together).
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (u64::from(std::process::id()) << 32) ^ nanos ^ 0x9E37_79B9_7F4A_7C15
}

/// Either gate, as a configuration hands it over.
#[derive(FromPyObject)]
pub enum AnyGatePy<'py> {
    Fixed(PyRef<'py, GatePy>),
    Adaptive(PyRef<'py, AdaptiveGatePy>),
}

impl AnyGatePy<'_> {
    pub fn gate(&self) -> Arc<Gate> {
        match self {
            Self::Fixed(g) => g.gate.clone(),
            Self::Adaptive(g) => g.gate.clone(),
        }
    }
}

/// One admitted unit of work. Released exactly once: by `release()`, by leaving a `with`
/// block, or, as a safety net, when it is garbage-collected.
// A freelist: the Flask and Django adapters make one per admitted request.
#[pyclass(name = "Permit", module = "tidegate._tidegate", frozen, freelist = 256)]
pub struct PermitPy {
    gate: Arc<Gate>,
    ticket: Ticket,
    released: AtomicBool,
    /// When a decision that counts metrics admitted it (see `decide::give_back`).
    since: Option<std::time::Instant>,
}

impl PermitPy {
    pub fn new(gate: Arc<Gate>, ticket: Ticket) -> Self {
        Self::timed(gate, ticket, None)
    }

    /// The permit of a request the decision admitted.
    pub fn of(admission: crate::decide::Admission<'_>) -> Self {
        Self::timed(admission.gate.clone(), admission.ticket, admission.since)
    }

    fn timed(gate: Arc<Gate>, ticket: Ticket, since: Option<std::time::Instant>) -> Self {
        Self {
            gate,
            ticket,
            released: AtomicBool::new(false),
            since,
        }
    }

    /// Hands the slot over to the caller (who must release it on `gate` once, with the
    /// ticket and the admission time: `decide::give_back`), unless the permit was
    /// already released; the permit then counts as released.
    pub fn take_slot(&self) -> Option<(Arc<Gate>, Ticket, Option<std::time::Instant>)> {
        (!self.released.swap(true, Ordering::AcqRel))
            .then(|| (self.gate.clone(), self.ticket, self.since))
    }

    /// Whether the slot went back (or was handed over) already.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Gives the slot back unless that already happened; true when this call released it.
    pub fn release_once(&self) -> bool {
        let first = !self.released.swap(true, Ordering::AcqRel);
        if first {
            crate::decide::give_back(&self.gate, self.ticket, self.since);
        }
        first
    }
}

impl Drop for PermitPy {
    fn drop(&mut self) {
        self.release_once();
    }
}

#[pymethods]
impl PermitPy {
    fn release(&self) {
        self.release_once();
    }

    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.release_once();
        false
    }

    fn __repr__(&self) -> String {
        let state = if self.released() { "released" } else { "held" };
        format!("<Permit {state}>")
    }
}
