//! The capacity gate: a concurrency limit that admits in one atomic step.
//!
//! `Gate` is plain Rust and knows nothing of Python; `GatePy`, `AdaptiveGatePy` and `PermitPy`
//! are the thin wrappers Python sees as `CapacityGate`, `AdaptiveGate` and `Permit`.
//!
//! One `Gate` type serves both: a fixed gate's limit moves only when someone sets it; an
//! adaptive gate ([`Gate::adaptive`]) carries a [`adaptive::Limiter`] that sets it from the
//! latency of the requests it admits. Whoever holds a gate (the decision, a permit) admits
//! and releases the same way and never asks which kind it is.
//!
//! # The adaptive gate's per-request work
//!
//! Admission reads the clock once more than a fixed gate does; the admission time and the
//! in-flight count travel in the [`Ticket`]. Release adds the sample to a handful of atomics
//! (count, RTT sum and minimum, in-flight sum and maximum). Only the thread whose release
//! finds that a window may close (the limiter publishes when, in atomics) takes the
//! limiter's lock, with `try_lock`: it never waits for it. That thread runs the algorithm on
//! the summed samples and stores the new limit; admission goes on reading one atomic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::errors::ArgError;

pub mod adaptive;
mod py;

use adaptive::{Batch, Limiter, LimiterConfig};

pub use py::{extract_limit, AdaptiveGatePy, AnyGatePy, GatePy, PermitPy};

/// What an admission hands over, to be given back to [`Gate::release`]: when the request was
/// admitted (nanoseconds since the gate was made; 0 for a fixed gate, which never reads the
/// clock) and how many were in flight then, itself included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticket {
    admitted_at: u64,
    inflight: u32,
}

/// A share of the limit in thousandths: 1000 is the whole limit.
pub const WHOLE_SHARE: u32 = 1000;

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
    /// The limit's own setter, for an adaptive gate.
    adaptive: Option<Box<Adaptive>>,
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
            adaptive: None,
        })
    }

    /// A gate whose limit the limiter of `config` sets.
    pub fn adaptive(config: LimiterConfig) -> Result<Self, ArgError> {
        let limiter = Limiter::new(config)?;
        let mut gate = Self::new(limiter.limit())?;
        gate.adaptive = Some(Box::new(Adaptive::new(limiter)));
        Ok(gate)
    }

    /// Reads the adaptive gate's limiter (`None` for a fixed gate). For tests and reports.
    pub fn with_limiter<T>(&self, f: impl FnOnce(&Limiter) -> T) -> Option<T> {
        self.adaptive.as_ref().map(|a| f(&a.limiter.lock()))
    }

    pub fn is_adaptive(&self) -> bool {
        self.adaptive.is_some()
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
    pub fn try_acquire(&self) -> Option<Ticket> {
        self.try_acquire_share(WHOLE_SHARE)
    }

    /// One admission attempt for a request that may fill only `share` thousandths of the
    /// limit (rounded up, and at least one slot); a refusal counts as a rejection and lets an
    /// adaptive gate's limiter look at the time.
    pub fn try_acquire_share(&self, share: u32) -> Option<Ticket> {
        if let Some(inflight) = self.admit(share) {
            return Some(self.ticket(inflight));
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(adaptive) = &self.adaptive {
            adaptive.poll(self);
        }
        None
    }

    fn ticket(&self, inflight: usize) -> Ticket {
        Ticket {
            admitted_at: self.adaptive.as_ref().map_or(0, |a| a.now()),
            inflight: u32::try_from(inflight).unwrap_or(u32::MAX),
        }
    }

    /// Takes a slot if one is free under `share` of the limit; counts an admission but never
    /// a rejection. Returns how many are in flight with this one.
    fn admit(&self, share: u32) -> Option<usize> {
        let mut limit = self.limit.load(Ordering::SeqCst);
        if share < WHOLE_SHARE {
            limit = (limit * share as usize)
                .div_ceil(WHOLE_SHARE as usize)
                .max(1);
        }
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current >= limit {
                return None;
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
                    return Some(current + 1);
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives a slot back, with the ticket its admission gave (an adaptive gate's sample).
    /// Callers release exactly what they took; `Permit` makes sure of it.
    pub fn release(&self, ticket: Ticket) {
        let previous = self.in_flight.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(previous > 0, "released a gate slot that was never taken");
        if let Some(adaptive) = &self.adaptive {
            adaptive.record(self, ticket);
        }
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
    /// `Wait::Again` when the slice ended first: the caller checks for signals and calls again.
    pub fn wait_slice(&self, deadline: Option<Instant>) -> Wait {
        if let Some(inflight) = self.admit(WHOLE_SHARE) {
            return Wait::Admitted(self.ticket(inflight));
        }
        let mut guard = self.wake_lock.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let outcome = loop {
            // Checked after registering as a waiter so a release in between is not missed.
            if let Some(inflight) = self.admit(WHOLE_SHARE) {
                break Ok(inflight);
            }
            let now = Instant::now();
            let slice_end = now + WAIT_SLICE;
            let wake_at = match deadline {
                Some(d) if d <= now => break Err(Wait::TimedOut),
                Some(d) => d.min(slice_end),
                None => slice_end,
            };
            if self.wake.wait_until(&mut guard, wake_at).timed_out() {
                if let Some(inflight) = self.admit(WHOLE_SHARE) {
                    break Ok(inflight);
                }
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    break Err(Wait::TimedOut);
                }
                break Err(Wait::Again);
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        match outcome {
            Ok(inflight) => Wait::Admitted(self.ticket(inflight)),
            Err(wait) => wait,
        }
    }

    /// Counts a wait that ended without a slot.
    pub fn count_rejection(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

/// How one slice of waiting for a slot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Admitted(Ticket),
    TimedOut,
    /// The slice ended first.
    Again,
}

/// Nanoseconds for a limiter time in seconds: NaN and negatives are 0, beyond the range the
/// largest value.
fn nanos(seconds: f64) -> u64 {
    if seconds.is_nan() || seconds <= 0.0 {
        0
    } else {
        // A float-to-int `as` saturates: infinity becomes u64::MAX.
        (seconds * 1e9) as u64
    }
}

/// The adaptive part of a gate: the limiter behind a lock and the samples summed since it
/// last ran, in atomics. See the module documentation.
#[derive(Debug)]
struct Adaptive {
    origin: Instant,
    limiter: Mutex<Limiter>,
    count: AtomicU64,
    sum_rtt: AtomicU64,
    min_rtt: AtomicU64,
    sum_inflight: AtomicU64,
    max_inflight: AtomicU64,
    /// Shorter samples say nothing of the app (nanoseconds).
    min_rtt_threshold: u64,
    /// The limiter's filter: samples count when admitted at or after this time and with at
    /// most `inflight_cap` in flight.
    admitted_after: AtomicU64,
    inflight_cap: AtomicU64,
    /// The limiter's `Due`: when summed samples must be handed over.
    due_at: AtomicU64,
    due_samples: AtomicU64,
    timeout_at: AtomicU64,
}

impl Adaptive {
    fn new(limiter: Limiter) -> Self {
        let adaptive = Self {
            origin: Instant::now(),
            min_rtt_threshold: nanos(limiter.min_rtt_threshold()),
            limiter: Mutex::new(limiter),
            count: AtomicU64::new(0),
            sum_rtt: AtomicU64::new(0),
            min_rtt: AtomicU64::new(u64::MAX),
            sum_inflight: AtomicU64::new(0),
            max_inflight: AtomicU64::new(0),
            admitted_after: AtomicU64::new(0),
            inflight_cap: AtomicU64::new(u64::MAX),
            due_at: AtomicU64::new(0),
            due_samples: AtomicU64::new(1),
            timeout_at: AtomicU64::new(u64::MAX),
        };
        adaptive.publish(&adaptive.limiter.lock());
        adaptive
    }

    /// Nanoseconds since the gate was made.
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// One admitted request ended: its sample is summed, and handed to the limiter when a
    /// window may close.
    fn record(&self, gate: &Gate, ticket: Ticket) {
        let now = self.now();
        let rtt = now.saturating_sub(ticket.admitted_at);
        let inflight = u64::from(ticket.inflight);
        if rtt > 0
            && rtt >= self.min_rtt_threshold
            && ticket.admitted_at >= self.admitted_after.load(Ordering::Relaxed)
            && inflight <= self.inflight_cap.load(Ordering::Relaxed)
        {
            self.count.fetch_add(1, Ordering::Relaxed);
            self.sum_rtt.fetch_add(rtt, Ordering::Relaxed);
            self.min_rtt.fetch_min(rtt, Ordering::Relaxed);
            self.sum_inflight.fetch_add(inflight, Ordering::Relaxed);
            self.max_inflight.fetch_max(inflight, Ordering::Relaxed);
        }
        let due = now >= self.due_at.load(Ordering::Relaxed)
            && self.count.load(Ordering::Relaxed) >= self.due_samples.load(Ordering::Relaxed);
        if due || now >= self.timeout_at.load(Ordering::Relaxed) {
            self.flush(gate, now);
        }
    }

    /// A refusal: a window that waits for samples may time out.
    fn poll(&self, gate: &Gate) {
        if self.timeout_at.load(Ordering::Relaxed) == u64::MAX {
            return;
        }
        let now = self.now();
        if now >= self.timeout_at.load(Ordering::Relaxed) {
            self.flush(gate, now);
        }
    }

    /// Hands the summed samples to the limiter, unless another thread is doing so.
    fn flush(&self, gate: &Gate, now: u64) {
        let Some(mut limiter) = self.limiter.try_lock() else {
            return;
        };
        let count = self.count.swap(0, Ordering::Relaxed);
        let batch = Batch {
            count: u32::try_from(count).unwrap_or(u32::MAX),
            sum_rtt: self.sum_rtt.swap(0, Ordering::Relaxed) as f64 / 1e9,
            min_rtt: self.min_rtt.swap(u64::MAX, Ordering::Relaxed) as f64 / 1e9,
            sum_inflight: self.sum_inflight.swap(0, Ordering::Relaxed) as f64,
            max_inflight: usize::try_from(self.max_inflight.swap(0, Ordering::Relaxed))
                .unwrap_or(usize::MAX),
            dropped: false,
        };
        let changed = limiter.on_batch(now as f64 / 1e9, &batch);
        self.publish(&limiter);
        drop(limiter);
        if let Some(limit) = changed {
            gate.limit.store(limit, Ordering::SeqCst);
            gate.wake_all();
            if crate::metrics::enabled() {
                crate::metrics::set_concurrency_limit(limit);
            }
        }
    }

    /// Stores what the limiter wants from the next samples where releases read it.
    fn publish(&self, limiter: &Limiter) {
        let (after, cap) = limiter.filter();
        let due = limiter.due();
        self.admitted_after.store(nanos(after), Ordering::Relaxed);
        self.inflight_cap.store(
            cap.map_or(u64::MAX, |c| u64::try_from(c).unwrap_or(u64::MAX)),
            Ordering::Relaxed,
        );
        self.due_at.store(nanos(due.at), Ordering::Relaxed);
        self.due_samples
            .store(u64::from(due.samples), Ordering::Relaxed);
        self.timeout_at
            .store(nanos(due.timeout_at), Ordering::Relaxed);
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
