//! The capacity gate: a concurrency limit that admits in one atomic step.
//!
//! `Gate` is plain Rust and knows nothing of Python; `GatePy` and `PermitPy` are the thin
//! wrappers Python sees as `CapacityGate` and `Permit`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

use crate::errors::{int_beyond_float, whole_number, ArgError, WholeNumber};

/// How long a waiter sleeps at most before it looks for signals (Ctrl-C) again.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// A concurrency limit with counters.
///
/// Admission is a compare-and-swap on `in_flight`, so no interleaving of threads can push it
/// above `limit`. Lowering the limit never evicts anyone: it stops new admissions until enough
/// permits come back.
#[derive(Debug)]
pub struct Gate {
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    admitted: AtomicU64,
    rejected: AtomicU64,
    waiters: AtomicUsize,
    wake_lock: Mutex<()>,
    wake: Condvar,
}

impl Gate {
    pub fn new(limit: usize) -> Result<Self, ArgError> {
        check_limit(limit)?;
        Ok(Self {
            limit: AtomicUsize::new(limit),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    pub fn set_limit(&self, limit: usize) -> Result<(), ArgError> {
        check_limit(limit)?;
        self.limit.store(limit, Ordering::SeqCst);
        self.wake_all();
        Ok(())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// One admission attempt that counts a refusal as a rejection.
    pub fn try_acquire(&self) -> bool {
        if self.admit() {
            true
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Takes a slot if one is free; counts an admission but never a rejection.
    fn admit(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current >= limit {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    // A plain load first: the read-modify-write is only needed for a new peak.
                    if current + 1 > self.peak.load(Ordering::Relaxed) {
                        self.peak.fetch_max(current + 1, Ordering::SeqCst);
                    }
                    self.admitted.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives a slot back. Callers release exactly what they took; `Permit` makes sure of it.
    pub fn release(&self) {
        let previous = self.in_flight.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(previous > 0, "released a gate slot that was never taken");
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.wake_lock.lock();
            self.wake.notify_one();
        }
    }

    fn wake_all(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.wake_lock.lock();
            self.wake.notify_all();
        }
    }

    /// Waits for a slot until `deadline`, but no longer than one `WAIT_SLICE`.
    ///
    /// Returns `Some(true)` when admitted, `Some(false)` when the deadline passed, and `None`
    /// when the slice ended first (the caller checks for signals and calls again).
    pub fn wait_slice(&self, deadline: Option<Instant>) -> Option<bool> {
        if self.admit() {
            return Some(true);
        }
        let mut guard = self.wake_lock.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let outcome = loop {
            // Checked after registering as a waiter so a release in between is not missed.
            if self.admit() {
                break Some(true);
            }
            let now = Instant::now();
            let slice_end = now + WAIT_SLICE;
            let wake_at = match deadline {
                Some(d) if d <= now => break Some(false),
                Some(d) => d.min(slice_end),
                None => slice_end,
            };
            if self.wake.wait_until(&mut guard, wake_at).timed_out() {
                if self.admit() {
                    break Some(true);
                }
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    break Some(false);
                }
                break None;
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        outcome
    }

    /// Counts a wait that ended without a slot.
    pub fn count_rejection(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

fn check_limit(limit: usize) -> Result<(), ArgError> {
    if limit == 0 {
        return Err(ArgError::value("limit", "must be an integer >= 1, got 0"));
    }
    Ok(())
}

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

/// Reads an optional timeout in seconds: `None` waits forever; otherwise finite and >= 0. A
/// finite timeout too long for a `Duration` (over about 584 billion years) waits forever too.
fn extract_timeout(timeout: Option<f64>) -> Result<Option<Duration>, ArgError> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Duration::try_from_secs_f64(t).ok()),
        Some(t) => Err(ArgError::value(
            "timeout",
            format!("must be a finite number of seconds >= 0, got {t}"),
        )),
    }
}

/// The moment a wait of `timeout` that starts at `now` gives up; `None` when it never does,
/// which includes a timeout that reaches past the last instant the clock can represent.
fn deadline_after(now: Instant, timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| now.checked_add(t))
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
}

impl PermitPy {
    pub fn new(gate: Arc<Gate>) -> Self {
        Self {
            gate,
            released: AtomicBool::new(false),
        }
    }

    /// Hands the slot over to the caller (who must release it on `gate` once), unless the
    /// permit was already released; the permit then counts as released.
    pub fn take_slot(&self) -> Option<Arc<Gate>> {
        (!self.released.swap(true, Ordering::AcqRel)).then(|| self.gate.clone())
    }

    /// Gives the slot back unless that already happened; true when this call released it.
    pub fn release_once(&self) -> bool {
        let first = !self.released.swap(true, Ordering::AcqRel);
        if first {
            self.gate.release();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::thread;

    #[test]
    fn zero_limit_is_refused() {
        assert!(Gate::new(0).is_err());
        let gate = Gate::new(1).expect("valid limit");
        assert!(gate.set_limit(0).is_err());
        assert_eq!(gate.limit(), 1);
    }

    #[test]
    fn admits_up_to_the_limit_then_rejects() {
        let gate = Gate::new(2).expect("valid limit");
        assert!(gate.try_acquire());
        assert!(gate.try_acquire());
        assert!(!gate.try_acquire());
        assert_eq!(
            (gate.admitted(), gate.rejected(), gate.in_flight()),
            (2, 1, 2)
        );
        gate.release();
        assert!(gate.try_acquire());
        assert_eq!(gate.peak(), 2);
    }

    #[test]
    fn lowering_the_limit_stops_admissions_until_enough_come_back() {
        let gate = Gate::new(3).expect("valid limit");
        for _ in 0..3 {
            assert!(gate.try_acquire());
        }
        gate.set_limit(1).expect("valid limit");
        gate.release();
        assert!(!gate.try_acquire(), "2 in flight, limit 1");
        gate.release();
        gate.release();
        assert!(gate.try_acquire());
    }

    #[test]
    fn never_exceeds_the_limit_under_contention() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 20_000;
        let gate = Arc::new(Gate::new(3).expect("valid limit"));
        let inside = Arc::new(AtomicUsize::new(0));
        let worst = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (gate, inside, worst, start) =
                    (gate.clone(), inside.clone(), worst.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    for _ in 0..ROUNDS {
                        if gate.try_acquire() {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            worst.fetch_max(now, Ordering::SeqCst);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            gate.release();
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("worker thread");
        }
        assert!(worst.load(Ordering::SeqCst) <= 3);
        assert!(gate.peak() <= 3);
        assert_eq!(gate.in_flight(), 0);
        assert_eq!(gate.admitted() + gate.rejected(), (THREADS * ROUNDS) as u64);
    }

    #[test]
    fn a_waiter_gets_the_released_slot() {
        let gate = Arc::new(Gate::new(1).expect("valid limit"));
        assert!(gate.try_acquire());
        let waiter = {
            let gate = gate.clone();
            thread::spawn(move || {
                let deadline = deadline_after(Instant::now(), Some(Duration::from_secs(5)));
                loop {
                    if let Some(done) = gate.wait_slice(deadline) {
                        return done;
                    }
                }
            })
        };
        thread::sleep(Duration::from_millis(20));
        gate.release();
        assert!(waiter.join().expect("waiter thread"));
        assert_eq!(gate.in_flight(), 1);
    }

    #[test]
    fn a_wait_times_out() {
        let gate = Gate::new(1).expect("valid limit");
        assert!(gate.try_acquire());
        let started = Instant::now();
        let deadline = deadline_after(started, Some(Duration::from_millis(30)));
        let outcome = loop {
            if let Some(done) = gate.wait_slice(deadline) {
                break done;
            }
        };
        assert!(!outcome);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_timeout_too_long_to_represent_never_expires() {
        let now = Instant::now();
        for seconds in [1e19, 1.8e19, 1e20, 1e300, f64::MAX] {
            let timeout = extract_timeout(Some(seconds)).expect("a finite timeout is accepted");
            assert_eq!(deadline_after(now, timeout), None, "{seconds}");
        }
        assert_eq!(
            deadline_after(now, Some(Duration::MAX)),
            None,
            "a Duration past the clock's last instant"
        );
        let ordinary = extract_timeout(Some(2.5)).expect("valid timeout");
        assert_eq!(
            deadline_after(now, ordinary),
            Some(now + Duration::from_millis(2500))
        );
        assert_eq!(deadline_after(now, None), None);
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let err = extract_timeout(Some(bad)).expect_err("refused");
            assert!(err.to_string().starts_with("timeout: "), "{err}");
        }
    }

    #[test]
    fn a_wait_without_a_deadline_still_gets_the_released_slot() {
        let gate = Arc::new(Gate::new(1).expect("valid limit"));
        assert!(gate.try_acquire());
        let timeout = extract_timeout(Some(1e19)).expect("valid timeout");
        let deadline = deadline_after(Instant::now(), timeout);
        let waiter = {
            let gate = gate.clone();
            thread::spawn(move || loop {
                if let Some(done) = gate.wait_slice(deadline) {
                    return done;
                }
            })
        };
        thread::sleep(Duration::from_millis(20));
        gate.release();
        assert!(waiter.join().expect("waiter thread"));
    }
}
