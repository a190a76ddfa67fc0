//! The capacity gate: a concurrency limit that admits in one atomic step.
//!
//! `Gate` is plain Rust and knows nothing of Python; `GatePy` and `PermitPy` are the thin
//! wrappers Python sees as `CapacityGate` and `Permit`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::errors::ArgError;

pub mod adaptive;
mod py;

pub use py::{extract_limit, GatePy, PermitPy};

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

/// Reads an optional timeout in seconds: `None` waits forever; otherwise finite and >= 0. A
/// finite timeout too long for a `Duration` (over about 584 billion years) waits forever too.
pub(crate) fn extract_timeout(timeout: Option<f64>) -> Result<Option<Duration>, ArgError> {
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
pub(crate) fn deadline_after(now: Instant, timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| now.checked_add(t))
}

#[cfg(test)]
mod tests;
