//! The Python face of the capacity gate: `CapacityGate` and `Permit`, argument conversion
//! around the plain `Gate`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

use super::{deadline_after, extract_timeout, Gate};
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
        self.gate
            .try_acquire()
            .then(|| PermitPy::new(self.gate.clone()))
    }

    #[pyo3(signature = (timeout=None))]
    fn acquire(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<PermitPy>> {
        let timeout = extract_timeout(timeout_seconds(timeout)?)?;
        let deadline = deadline_after(Instant::now(), timeout);
        loop {
            let gate = &self.gate;
            match py.detach(|| gate.wait_slice(deadline)) {
                Some(true) => return Ok(Some(PermitPy::new(self.gate.clone()))),
                Some(false) => {
                    self.gate.count_rejection();
                    return Ok(None);
                }
                None => {
                    if let Err(err) = py.check_signals() {
                        self.gate.count_rejection();
                        return Err(err);
                    }
                }
            }
        }
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

/// One admitted unit of work. Released exactly once: by `release()`, by leaving a `with`
/// block, or, as a safety net, when it is garbage-collected.
// A freelist: the Flask and Django adapters make one per admitted request.
#[pyclass(name = "Permit", module = "tidegate._tidegate", frozen, freelist = 256)]
pub struct PermitPy {
    gate: Arc<Gate>,
    released: AtomicBool,
    /// When a decision that counts metrics admitted it (see `decide::finished`).
    since: Option<std::time::Instant>,
}

impl PermitPy {
    pub fn new(gate: Arc<Gate>) -> Self {
        Self::admitted(gate, None)
    }

    /// A permit the decision took at `since` (when metrics time it).
    pub fn admitted(gate: Arc<Gate>, since: Option<std::time::Instant>) -> Self {
        Self {
            gate,
            released: AtomicBool::new(false),
            since,
        }
    }

    /// Hands the slot over to the caller (who must release it on `gate` once, and pass the
    /// admission time to `decide::finished`), unless the permit was already released; the
    /// permit then counts as released.
    pub fn take_slot(&self) -> Option<(Arc<Gate>, Option<std::time::Instant>)> {
        (!self.released.swap(true, Ordering::AcqRel)).then(|| (self.gate.clone(), self.since))
    }

    /// Whether the slot went back (or was handed over) already.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Gives the slot back unless that already happened; true when this call released it.
    pub fn release_once(&self) -> bool {
        let first = !self.released.swap(true, Ordering::AcqRel);
        if first {
            self.gate.release();
            crate::decide::finished(self.since);
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
