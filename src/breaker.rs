//! The circuit breaker: stop calling a dependency that keeps failing, probe it now and then,
//! and go back to normal once it answers again.
//!
//! `Breaker` is plain Rust and takes the time as an argument, so every transition is tested
//! with a clock the test controls. `crate::breaker_py` is the thin wrapper Python sees.
//!
//! Every state change bumps a generation counter and every admitted call carries the
//! generation it was admitted under. A result that comes back after the breaker has moved on
//! (a slow call started while closed that fails once the breaker is already half-open) is
//! counted in the totals but cannot touch the current state.
//!
//! A probe holds its half-open slot for at most `probe_timeout` seconds. A probe that has not
//! reported by then (it hangs, or whoever ran it vanished) gives the slot back to the next
//! caller, and its result, should it ever come, is treated like a late one: counted in the
//! totals, never moving the state.

use std::collections::VecDeque;
use std::fmt;

use parking_lot::Mutex;

use crate::errors::ArgError;

/// How finely the failure-rate window slides: `window / WINDOW_BUCKETS` seconds per step.
const WINDOW_BUCKETS: f64 = 60.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a breaker is told to do. Times are seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets a probe through.
    pub reset_timeout: f64,
    /// Probes allowed in flight at once while half-open.
    pub half_open_max_calls: u32,
    /// How long a probe may hold its slot; `None` for the default (see `probe_timeout()`).
    pub probe_timeout: Option<f64>,
    /// Probe successes that close a half-open breaker.
    pub success_threshold: u32,
    /// Open when this share of the calls in `window` failed (0 < rate <= 1); off when `None`.
    pub failure_rate: Option<f64>,
    /// Length of the sliding window the failure rate is measured over.
    pub window: f64,
    /// The failure rate is only judged once the window holds this many calls.
    pub minimum_calls: u32,
    /// When set, each re-trip from half-open multiplies the open time by `backoff`, up to this.
    pub max_reset_timeout: Option<f64>,
    pub backoff: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            reset_timeout: 30.0,
            half_open_max_calls: 1,
            probe_timeout: None,
            success_threshold: 1,
            failure_rate: None,
            window: 60.0,
            minimum_calls: 10,
            max_reset_timeout: None,
            backoff: 2.0,
        }
    }
}

/// The shortest default bound on a probe, whatever `reset_timeout` is.
const MIN_DEFAULT_PROBE_TIMEOUT: f64 = 30.0;

impl Config {
    /// How long a probe may hold its slot: as set, or by default the larger of
    /// `reset_timeout` and 30 seconds (a probe may take as long as the breaker waited before
    /// sending it, and an ordinary slow call is not cut short when `reset_timeout` is small).
    pub fn probe_timeout(&self) -> f64 {
        self.probe_timeout
            .unwrap_or(self.reset_timeout.max(MIN_DEFAULT_PROBE_TIMEOUT))
    }

    pub fn validate(&self) -> Result<(), ArgError> {
        for (param, value) in [
            ("failure_threshold", self.failure_threshold),
            ("half_open_max_calls", self.half_open_max_calls),
            ("success_threshold", self.success_threshold),
            ("minimum_calls", self.minimum_calls),
        ] {
            if value == 0 {
                return Err(ArgError::value(param, "must be an integer >= 1, got 0"));
            }
        }
        if !(self.reset_timeout.is_finite() && self.reset_timeout >= 0.0) {
            return Err(ArgError::value(
                "reset_timeout",
                format!(
                    "must be a finite number of seconds >= 0, got {}",
                    self.reset_timeout
                ),
            ));
        }
        if let Some(bound) = self.probe_timeout {
            if !(bound.is_finite() && bound > 0.0) {
                return Err(ArgError::value(
                    "probe_timeout",
                    format!("must be a finite number of seconds > 0, got {bound}"),
                ));
            }
        }
        if !(self.window.is_finite() && self.window > 0.0) {
            return Err(ArgError::value(
                "window",
                format!(
                    "must be a finite number of seconds > 0, got {}",
                    self.window
                ),
            ));
        }
        if let Some(rate) = self.failure_rate {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(ArgError::value(
                    "failure_rate",
                    format!("must be in (0, 1], got {rate}"),
                ));
            }
        }
        if let Some(cap) = self.max_reset_timeout {
            if !(cap.is_finite() && cap >= self.reset_timeout) {
                return Err(ArgError::value(
                    "max_reset_timeout",
                    format!(
                        "must be a finite number of seconds >= reset_timeout ({}), got {cap}",
                        self.reset_timeout
                    ),
                ));
            }
        }
        if !(self.backoff.is_finite() && self.backoff >= 1.0) {
            return Err(ArgError::value(
                "backoff",
                format!("must be a finite number >= 1, got {}", self.backoff),
            ));
        }
        Ok(())
    }
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    ConsecutiveFailures(u32),
    FailureRate { failures: u64, calls: u64 },
    ProbeFailed,
    TimeoutElapsed,
    ProbesSucceeded(u32),
    Manual,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConsecutiveFailures(1) => f.write_str("1 failure"),
            Self::ConsecutiveFailures(n) => write!(f, "{n} consecutive failures"),
            Self::FailureRate { calls: 1, .. } => f.write_str("the only call in the window failed"),
            Self::FailureRate { failures, calls } => {
                write!(f, "{failures} of the last {calls} calls failed")
            }
            Self::ProbeFailed => f.write_str("a probe call failed"),
            Self::TimeoutElapsed => f.write_str("reset timeout elapsed"),
            Self::ProbesSucceeded(1) => f.write_str("a probe call succeeded"),
            Self::ProbesSucceeded(n) => write!(f, "{n} probe calls succeeded"),
            Self::Manual => f.write_str("set by hand"),
        }
    }
}

/// One state change, reported to whoever caused it so it can be logged and announced after
/// the lock is gone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    /// How long the breaker stays open (meaningful when `to` is `Open`).
    pub open_for: f64,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} ({})", self.from, self.to, self.reason)?;
        if self.to == State::Open {
            write!(f, ", next probe in {}s", Seconds(self.open_for))?;
        }
        Ok(())
    }
}

/// Seconds written short: `30`, `2.5`, `0.125`.
struct Seconds(f64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{:.3}", self.0);
        let text = text.trim_end_matches('0').trim_end_matches('.');
        f.write_str(text)
    }
}

/// The right to report one call's result. `probe` marks a half-open probe slot, and `slot`
/// tells that probe's reservation apart from the others (0 for a call that is no probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub generation: u64,
    pub probe: bool,
    pub slot: u64,
}

/// A call refused without running: the breaker is open, or half-open with every probe slot
/// taken. `retry_after` is the time left until a probe is allowed (0 when half-open).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rejected {
    pub state: State,
    pub retry_after: f64,
}

/// How an admitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Neither: an excluded exception or an interruption. Only frees a probe slot.
    Ignored,
}

/// Counters and state read in one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub state: State,
    pub failure_count: u32,
    pub total_successes: u64,
    pub total_failures: u64,
    pub rejected: u64,
    pub probes_in_flight: u32,
    /// Probe reservations that ran out before their probe reported.
    pub probes_expired: u64,
}

/// A half-open probe slot, held until the probe reports or `expires` passes.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    slot: u64,
    expires: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    index: i64,
    calls: u64,
    failures: u64,
}

/// Calls and failures over the last `span` seconds, in `WINDOW_BUCKETS` steps so memory stays
/// bounded however many calls go through.
#[derive(Debug)]
struct Window {
    width: f64,
    span: f64,
    buckets: VecDeque<Bucket>,
    calls: u64,
    failures: u64,
}

impl Window {
    fn new(span: f64) -> Self {
        Self {
            width: span / WINDOW_BUCKETS,
            span,
            buckets: VecDeque::new(),
            calls: 0,
            failures: 0,
        }
    }

    fn index(&self, now: f64) -> i64 {
        // `as` saturates, so no clock value can overflow here.
        (now / self.width).floor() as i64
    }

    fn prune(&mut self, now: f64) {
        let oldest = self.index(now - self.span);
        while let Some(front) = self.buckets.front() {
            if front.index > oldest {
                break;
            }
            self.calls -= front.calls;
            self.failures -= front.failures;
            self.buckets.pop_front();
        }
    }

    fn record(&mut self, now: f64, failed: bool) {
        self.prune(now);
        let index = self.index(now);
        let failed = u64::from(failed);
        match self.buckets.back_mut() {
            // A clock that stepped back lands in the newest bucket instead of reordering.
            Some(back) if back.index >= index => {
                back.calls += 1;
                back.failures += failed;
            }
            _ => self.buckets.push_back(Bucket {
                index,
                calls: 1,
                failures: failed,
            }),
        }
        self.calls += 1;
        self.failures += failed;
    }

    fn clear(&mut self) {
        self.buckets.clear();
        self.calls = 0;
        self.failures = 0;
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    generation: u64,
    opened_at: f64,
    open_for: f64,
    consecutive_failures: u32,
    /// At most `half_open_max_calls` entries, so memory is bounded by the configuration.
    probes: Vec<Reservation>,
    /// The last `Ticket::slot` handed out.
    last_slot: u64,
    probes_expired: u64,
    probe_successes: u32,
    window: Window,
    total_successes: u64,
    total_failures: u64,
    rejected: u64,
}

impl Inner {
    fn open_until(&self) -> f64 {
        self.opened_at + self.open_for
    }

    fn enter(&mut self, config: &Config, to: State, reason: Reason, now: f64) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        // Reservations belong to one half-open period; results from them are now late.
        self.probes.clear();
        match to {
            State::Open => {
                self.open_for = match (from, config.max_reset_timeout) {
                    (State::HalfOpen, Some(cap)) => (self.open_for * config.backoff).min(cap),
                    _ => config.reset_timeout,
                };
                self.opened_at = now;
                self.window.clear();
            }
            State::HalfOpen => {
                self.probe_successes = 0;
            }
            State::Closed => {
                self.consecutive_failures = 0;
                self.window.clear();
            }
        }
        Transition {
            from,
            to,
            reason,
            open_for: self.open_for,
        }
    }

    /// The lazy open -> half-open step, taken whenever someone looks.
    fn poll(&mut self, config: &Config, now: f64) -> Option<Transition> {
        (self.state == State::Open && now >= self.open_until())
            .then(|| self.enter(config, State::HalfOpen, Reason::TimeoutElapsed, now))
    }

    /// Frees the slots of probes that have held them past their bound.
    fn expire_probes(&mut self, now: f64) {
        let before = self.probes.len();
        self.probes.retain(|probe| now < probe.expires);
        self.probes_expired += (before - self.probes.len()) as u64;
    }

    /// Takes a probe's reservation back. True when it was still held at `now`, so the
    /// probe's result may move the state; false when it had already run out.
    fn release_probe(&mut self, slot: u64, now: f64) -> bool {
        let Some(index) = self.probes.iter().position(|p| p.slot == slot) else {
            return false;
        };
        let probe = self.probes.swap_remove(index);
        if now < probe.expires {
            return true;
        }
        self.probes_expired += 1;
        false
    }

    fn failed_while_closed(&mut self, config: &Config, now: f64) -> Option<Transition> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if config.failure_rate.is_some() {
            self.window.record(now, true);
        }
        let reason = if self.consecutive_failures >= config.failure_threshold {
            Reason::ConsecutiveFailures(self.consecutive_failures)
        } else {
            let rate = config.failure_rate?;
            let (calls, failures) = (self.window.calls, self.window.failures);
            if calls < u64::from(config.minimum_calls) || (failures as f64) < rate * calls as f64 {
                return None;
            }
            Reason::FailureRate { failures, calls }
        };
        Some(self.enter(config, State::Open, reason, now))
    }
}

/// A circuit breaker's state machine. Every method takes `now` in seconds on any monotonic
/// scale; the lock is held only for the bookkeeping, never while a protected call runs.
#[derive(Debug)]
pub struct Breaker {
    config: Config,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(config: Config) -> Result<Self, ArgError> {
        config.validate()?;
        let inner = Inner {
            state: State::Closed,
            generation: 0,
            opened_at: 0.0,
            open_for: config.reset_timeout,
            consecutive_failures: 0,
            probes: Vec::new(),
            last_slot: 0,
            probes_expired: 0,
            probe_successes: 0,
            window: Window::new(config.window),
            total_successes: 0,
            total_failures: 0,
            rejected: 0,
        };
        Ok(Self {
            config,
            inner: Mutex::new(inner),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Lets a call through or refuses it, in one step under the lock: half-open hands out at
    /// most `half_open_max_calls` probe slots however many threads race for them, each for
    /// at most `probe_timeout` seconds.
    pub fn admit(&self, now: f64) -> (Result<Ticket, Rejected>, Option<Transition>) {
        let mut inner = self.inner.lock();
        let transition = inner.poll(&self.config, now);
        let generation = inner.generation;
        if inner.state == State::HalfOpen {
            inner.expire_probes(now);
        }
        let admitted = match inner.state {
            State::Closed => Ok(Ticket {
                generation,
                probe: false,
                slot: 0,
            }),
            State::HalfOpen if inner.probes.len() < self.config.half_open_max_calls as usize => {
                inner.last_slot += 1;
                let slot = inner.last_slot;
                let expires = now + self.config.probe_timeout();
                inner.probes.push(Reservation { slot, expires });
                Ok(Ticket {
                    generation,
                    probe: true,
                    slot,
                })
            }
            State::HalfOpen => Err(Rejected {
                state: State::HalfOpen,
                retry_after: 0.0,
            }),
            State::Open => Err(Rejected {
                state: State::Open,
                retry_after: (inner.open_until() - now).max(0.0),
            }),
        };
        if admitted.is_err() {
            inner.rejected += 1;
        }
        (admitted, transition)
    }

    /// Reports how an admitted call ended. Each ticket must be settled exactly once.
    pub fn settle(&self, ticket: Ticket, outcome: Outcome, now: f64) -> Option<Transition> {
        let mut inner = self.inner.lock();
        match outcome {
            Outcome::Success => inner.total_successes += 1,
            Outcome::Failure => inner.total_failures += 1,
            Outcome::Ignored => {}
        }
        if ticket.generation != inner.generation {
            return None;
        }
        // A probe whose reservation ran out reports too late to move the state, just like a
        // call from an earlier generation.
        if ticket.probe && !inner.release_probe(ticket.slot, now) {
            return None;
        }
        let config = &self.config;
        match (inner.state, ticket.probe, outcome) {
            (State::HalfOpen, true, Outcome::Success) => {
                inner.probe_successes += 1;
                inner.consecutive_failures = 0;
                (inner.probe_successes >= config.success_threshold).then(|| {
                    let reason = Reason::ProbesSucceeded(inner.probe_successes);
                    inner.enter(config, State::Closed, reason, now)
                })
            }
            (State::HalfOpen, true, Outcome::Failure) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                Some(inner.enter(config, State::Open, Reason::ProbeFailed, now))
            }
            (State::HalfOpen, true, Outcome::Ignored) => None,
            (State::Closed, _, Outcome::Success) => {
                inner.consecutive_failures = 0;
                if config.failure_rate.is_some() {
                    inner.window.record(now, false);
                }
                None
            }
            (State::Closed, _, Outcome::Failure) => inner.failed_while_closed(config, now),
            // Nothing is admitted while open, and a ticket's generation pins the state it was
            // admitted under, so no other combination reaches this point.
            _ => None,
        }
    }

    /// The state now, taking the lazy open -> half-open step if it is due.
    pub fn state(&self, now: f64) -> (State, Option<Transition>) {
        let mut inner = self.inner.lock();
        let transition = inner.poll(&self.config, now);
        (inner.state, transition)
    }

    /// The state now without changing anything: an open breaker whose time is up reads as
    /// half-open.
    pub fn peek_state(&self, now: f64) -> State {
        let inner = self.inner.lock();
        match inner.state {
            State::Open if now >= inner.open_until() => State::HalfOpen,
            state => state,
        }
    }

    /// Seconds until a probe is allowed: 0 unless open.
    pub fn retry_after(&self, now: f64) -> f64 {
        let inner = self.inner.lock();
        match inner.state {
            State::Open => (inner.open_until() - now).max(0.0),
            _ => 0.0,
        }
    }

    /// Opens by hand. From half-open this is a re-trip (backoff applies); on an open breaker
    /// it restarts the open period without a transition.
    pub fn trip(&self, now: f64) -> Option<Transition> {
        let mut inner = self.inner.lock();
        if inner.state == State::Open {
            inner.opened_at = now;
            return None;
        }
        Some(inner.enter(&self.config, State::Open, Reason::Manual, now))
    }

    /// Closes by hand and forgets past failures. Calls still running from before are ignored.
    pub fn reset(&self, now: f64) -> Option<Transition> {
        let mut inner = self.inner.lock();
        if inner.state == State::Closed {
            inner.consecutive_failures = 0;
            inner.window.clear();
            return None;
        }
        Some(inner.enter(&self.config, State::Closed, Reason::Manual, now))
    }

    pub fn stats(&self) -> Stats {
        let inner = self.inner.lock();
        Stats {
            state: inner.state,
            failure_count: inner.consecutive_failures,
            total_successes: inner.total_successes,
            total_failures: inner.total_failures,
            rejected: inner.rejected,
            probes_in_flight: u32::try_from(inner.probes.len()).unwrap_or(u32::MAX),
            probes_expired: inner.probes_expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::thread;

    fn breaker(config: Config) -> Breaker {
        Breaker::new(config).expect("valid config")
    }

    fn admitted(b: &Breaker, now: f64) -> Ticket {
        b.admit(now).0.expect("admitted")
    }

    fn run(b: &Breaker, outcome: Outcome, now: f64) -> Option<Transition> {
        let ticket = admitted(b, now);
        b.settle(ticket, outcome, now)
    }

    #[test]
    fn bad_configs_name_the_parameter() {
        type Spoil = fn(&mut Config);
        let cases: [(&str, Spoil); 17] = [
            ("failure_threshold", |c| c.failure_threshold = 0),
            ("half_open_max_calls", |c| c.half_open_max_calls = 0),
            ("success_threshold", |c| c.success_threshold = 0),
            ("minimum_calls", |c| c.minimum_calls = 0),
            ("reset_timeout", |c| c.reset_timeout = -1.0),
            ("reset_timeout", |c| c.reset_timeout = f64::NAN),
            ("window", |c| c.window = 0.0),
            ("probe_timeout", |c| c.probe_timeout = Some(0.0)),
            ("probe_timeout", |c| c.probe_timeout = Some(-1.0)),
            ("probe_timeout", |c| c.probe_timeout = Some(f64::NAN)),
            ("probe_timeout", |c| c.probe_timeout = Some(f64::INFINITY)),
            ("failure_rate", |c| c.failure_rate = Some(0.0)),
            ("failure_rate", |c| c.failure_rate = Some(1.5)),
            ("failure_rate", |c| c.failure_rate = Some(f64::NAN)),
            ("max_reset_timeout", |c| c.max_reset_timeout = Some(10.0)),
            ("backoff", |c| c.backoff = 0.5),
            ("backoff", |c| c.backoff = f64::INFINITY),
        ];
        for (param, spoil) in cases {
            let mut config = Config::default();
            spoil(&mut config);
            let err = Breaker::new(config).expect_err(param);
            assert!(err.to_string().starts_with(&format!("{param}: ")), "{err}");
        }
        assert!(Breaker::new(Config {
            failure_rate: Some(1.0),
            reset_timeout: 0.0,
            ..Config::default()
        })
        .is_ok());
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker(Config {
            failure_threshold: 3,
            ..Config::default()
        });
        assert_eq!(run(&b, Outcome::Failure, 0.0), None);
        assert_eq!(run(&b, Outcome::Failure, 0.0), None);
        assert_eq!(b.stats().failure_count, 2);
        assert_eq!(run(&b, Outcome::Success, 0.0), None);
        assert_eq!(b.stats().failure_count, 0);
        run(&b, Outcome::Failure, 1.0);
        run(&b, Outcome::Failure, 1.0);
        let t = run(&b, Outcome::Failure, 1.0).expect("third failure opens");
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert_eq!(t.reason, Reason::ConsecutiveFailures(3));
        assert_eq!(b.state(1.0).0, State::Open);
        let stats = b.stats();
        assert_eq!((stats.total_failures, stats.total_successes), (5, 1));
    }

    #[test]
    fn open_refuses_with_the_time_left_then_goes_half_open_lazily() {
        let b = breaker(Config {
            failure_threshold: 1,
            reset_timeout: 10.0,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 100.0);
        let (refused, t) = b.admit(104.0);
        assert_eq!(
            refused,
            Err(Rejected {
                state: State::Open,
                retry_after: 6.0
            })
        );
        assert_eq!(t, None);
        assert_eq!(b.retry_after(104.0), 6.0);
        assert_eq!(b.stats().rejected, 1);
        assert_eq!(b.peek_state(110.0), State::HalfOpen);
        assert_eq!(b.stats().state, State::Open, "peeking changes nothing");
        let (state, t) = b.state(110.0);
        assert_eq!(state, State::HalfOpen);
        let t = t.expect("transition on read");
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::Open, State::HalfOpen, Reason::TimeoutElapsed)
        );
        assert_eq!(b.retry_after(110.0), 0.0);
    }

    #[test]
    fn admission_takes_the_lazy_step_too() {
        let b = breaker(Config {
            failure_threshold: 1,
            reset_timeout: 5.0,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 0.0);
        let (ticket, t) = b.admit(5.0);
        assert!(ticket.expect("a probe").probe);
        assert_eq!(t.map(|t| t.to), Some(State::HalfOpen));
    }

    #[test]
    fn half_open_bounds_probes_and_closes_after_enough_successes() {
        let b = breaker(Config {
            failure_threshold: 1,
            reset_timeout: 1.0,
            half_open_max_calls: 2,
            success_threshold: 3,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 0.0);
        let first = admitted(&b, 1.0);
        let second = admitted(&b, 1.0);
        let full = Err(Rejected {
            state: State::HalfOpen,
            retry_after: 0.0,
        });
        assert_eq!(b.admit(1.0).0, full);
        assert_eq!(b.settle(first, Outcome::Success, 1.5), None);
        let third = admitted(&b, 1.5);
        assert_eq!(b.admit(1.5).0, full);
        assert_eq!(b.settle(second, Outcome::Success, 2.0), None);
        let t = b
            .settle(third, Outcome::Success, 2.0)
            .expect("third success closes");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        assert_eq!(t.reason, Reason::ProbesSucceeded(3));
        assert!(!admitted(&b, 2.0).probe);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = breaker(Config {
            failure_threshold: 1,
            reset_timeout: 1.0,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 0.0);
        let t = run(&b, Outcome::Failure, 1.0).expect("probe failure reopens");
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::HalfOpen, State::Open, Reason::ProbeFailed)
        );
        assert_eq!(
            b.retry_after(1.0),
            1.0,
            "no backoff without max_reset_timeout"
        );
    }

    #[test]
    fn an_ignored_probe_frees_its_slot_and_changes_nothing_else() {
        let b = breaker(Config {
            failure_threshold: 1,
            reset_timeout: 1.0,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 0.0);
        let probe = admitted(&b, 1.0);
        assert!(b.admit(1.0).0.is_err());
        assert_eq!(b.settle(probe, Outcome::Ignored, 1.0), None);
        assert_eq!(b.stats().state, State::HalfOpen);
        assert!(admitted(&b, 1.0).probe, "the slot came back");
    }

    #[test]
    fn ignored_outcomes_neither_fail_nor_succeed_while_closed() {
        let b = breaker(Config {
            failure_threshold: 2,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 0.0);
        run(&b, Outcome::Ignored, 0.0);
        assert_eq!(
            b.stats().failure_count,
            1,
            "an ignored outcome resets nothing"
        );
        let stats = b.stats();
        assert_eq!((stats.total_failures, stats.total_successes), (1, 0));
        assert!(run(&b, Outcome::Failure, 0.0).is_some());
    }

    #[test]
    fn backoff_multiplies_the_open_time_up_to_the_cap_and_a_close_resets_it() {
        let b = breaker(Config {
            failure_threshold: 1,
            reset_timeout: 10.0,
            max_reset_timeout: Some(35.0),
            backoff: 2.0,
            ..Config::default()
        });
        let mut now = 0.0;
        let t = run(&b, Outcome::Failure, now).expect("opens");
        assert_eq!(t.open_for, 10.0);
        let mut seen = Vec::new();
        for _ in 0..4 {
            now += b.retry_after(now);
            let t = run(&b, Outcome::Failure, now).expect("probe failure reopens");
            seen.push(t.open_for);
            assert_eq!(b.retry_after(now), t.open_for);
            // One tick early is still open.
            assert!(b.admit(now + t.open_for - 0.001).0.is_err());
        }
        assert_eq!(seen, vec![20.0, 35.0, 35.0, 35.0]);
        now += b.retry_after(now);
        let t = run(&b, Outcome::Success, now).expect("probe success closes");
        assert_eq!(t.to, State::Closed);
        let t = run(&b, Outcome::Failure, now).expect("opens again");
        assert_eq!(t.open_for, 10.0, "a close starts the backoff over");
    }

    #[test]
    fn failure_rate_opens_only_with_enough_calls_in_the_window() {
        let b = breaker(Config {
            failure_threshold: 100,
            failure_rate: Some(0.5),
            window: 10.0,
            minimum_calls: 4,
            ..Config::default()
        });
        // success, failure, success: 1 of 3, below the minimum anyway.
        run(&b, Outcome::Success, 0.0);
        run(&b, Outcome::Failure, 0.0);
        run(&b, Outcome::Success, 0.0);
        // 2 of 4 reaches 50 %.
        let t = run(&b, Outcome::Failure, 1.0).expect("rate reached");
        assert_eq!(
            t.reason,
            Reason::FailureRate {
                failures: 2,
                calls: 4
            }
        );
    }

    #[test]
    fn failure_rate_forgets_calls_older_than_the_window() {
        let b = breaker(Config {
            failure_threshold: 100,
            failure_rate: Some(0.5),
            window: 10.0,
            minimum_calls: 4,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 0.0);
        run(&b, Outcome::Failure, 0.0);
        run(&b, Outcome::Failure, 0.0);
        run(&b, Outcome::Success, 0.0);
        // The three old failures have slid out; 1 failure of 4 recent calls stays below 50 %.
        for _ in 0..3 {
            assert_eq!(run(&b, Outcome::Success, 11.0), None);
        }
        assert_eq!(run(&b, Outcome::Failure, 11.0), None);
        assert_eq!(b.stats().state, State::Closed);
        // Inside the window they would have counted: 4 failures of 8.
        let b2 = breaker(b.config().clone());
        for outcome in [Outcome::Failure, Outcome::Failure, Outcome::Failure] {
            run(&b2, outcome, 0.0);
        }
        run(&b2, Outcome::Success, 0.0);
        for _ in 0..3 {
            run(&b2, Outcome::Success, 9.0);
        }
        assert!(run(&b2, Outcome::Failure, 9.0).is_some());
    }

    #[test]
    fn a_clock_stepping_back_does_not_break_the_window() {
        let b = breaker(Config {
            failure_threshold: 100,
            failure_rate: Some(1.0),
            window: 10.0,
            minimum_calls: 2,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 50.0);
        assert!(run(&b, Outcome::Failure, 20.0).is_some());
    }

    #[test]
    fn late_results_from_an_earlier_generation_change_nothing() {
        let b = breaker(Config {
            failure_threshold: 2,
            reset_timeout: 5.0,
            ..Config::default()
        });
        // Two slow calls admitted while closed.
        let slow_failure = admitted(&b, 0.0);
        let slow_success = admitted(&b, 0.0);
        run(&b, Outcome::Failure, 0.0);
        run(&b, Outcome::Failure, 0.0);
        let probe = admitted(&b, 5.0);
        assert!(probe.probe);
        // The slow failure must not count as a failed probe...
        assert_eq!(b.settle(slow_failure, Outcome::Failure, 6.0), None);
        assert_eq!(b.stats().state, State::HalfOpen);
        // ...nor the slow success as a successful one.
        assert_eq!(b.settle(slow_success, Outcome::Success, 6.0), None);
        assert_eq!(b.stats().state, State::HalfOpen);
        assert!(b.admit(6.0).0.is_err(), "the probe slot is still taken");
        let t = b.settle(probe, Outcome::Success, 6.0).expect("closes");
        assert_eq!(t.to, State::Closed);
        let stats = b.stats();
        assert_eq!((stats.total_failures, stats.total_successes), (3, 2));
    }

    #[test]
    fn a_probe_outliving_its_half_open_period_cannot_reopen() {
        let b = breaker(Config {
            failure_threshold: 1,
            reset_timeout: 1.0,
            half_open_max_calls: 2,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 0.0);
        let slow_probe = admitted(&b, 1.0);
        run(&b, Outcome::Success, 1.0); // the other probe closes the breaker
        assert_eq!(b.settle(slow_probe, Outcome::Failure, 2.0), None);
        assert_eq!(b.stats().state, State::Closed);
        assert_eq!(b.stats().failure_count, 0);
    }

    #[test]
    fn manual_open_and_close() {
        let b = breaker(Config {
            reset_timeout: 10.0,
            max_reset_timeout: Some(100.0),
            ..Config::default()
        });
        let in_flight = admitted(&b, 0.0);
        let t = b.trip(0.0).expect("opens");
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::Closed, State::Open, Reason::Manual)
        );
        assert_eq!(b.trip(4.0), None, "already open: restarts the timer");
        assert_eq!(b.retry_after(4.0), 10.0);
        assert_eq!(b.settle(in_flight, Outcome::Failure, 5.0), None);
        let t = b.reset(5.0).expect("closes");
        assert_eq!((t.from, t.to), (State::Open, State::Closed));
        run(&b, Outcome::Failure, 5.0);
        assert_eq!(b.reset(5.0), None);
        assert_eq!(b.stats().failure_count, 0, "reset forgets failures");
        // Opening a half-open breaker by hand is a re-trip.
        b.trip(10.0);
        b.state(20.0);
        let t = b.trip(20.0).expect("re-trip");
        assert_eq!(t.open_for, 20.0);
    }

    #[test]
    fn transitions_describe_themselves() {
        let t = Transition {
            from: State::Closed,
            to: State::Open,
            reason: Reason::ConsecutiveFailures(5),
            open_for: 2.5,
        };
        assert_eq!(
            t.to_string(),
            "closed -> open (5 consecutive failures), next probe in 2.5s"
        );
        let t = Transition {
            from: State::HalfOpen,
            to: State::Closed,
            reason: Reason::ProbesSucceeded(1),
            open_for: 30.0,
        };
        assert_eq!(
            t.to_string(),
            "half_open -> closed (a probe call succeeded)"
        );
        assert_eq!(Seconds(30.0).to_string(), "30");
        assert_eq!(Seconds(0.125).to_string(), "0.125");
    }

    #[test]
    fn racing_threads_get_exactly_the_probe_slots() {
        const THREADS: usize = 32;
        const ROUNDS: usize = 200;
        const SLOTS: u32 = 3;
        let b = Arc::new(breaker(Config {
            failure_threshold: 1,
            reset_timeout: 1.0,
            half_open_max_calls: SLOTS,
            success_threshold: SLOTS,
            ..Config::default()
        }));
        for round in 0..ROUNDS {
            let now = round as f64 * 10.0;
            b.trip(now);
            let probe_time = now + 1.0;
            let start = Arc::new(Barrier::new(THREADS));
            let admitted = Arc::new(AtomicUsize::new(0));
            let tickets: Vec<Option<Ticket>> = (0..THREADS)
                .map(|_| {
                    let (b, start, admitted) = (b.clone(), start.clone(), admitted.clone());
                    thread::spawn(move || {
                        start.wait();
                        let ticket = b.admit(probe_time).0.ok();
                        if ticket.is_some() {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        ticket
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().expect("racer"))
                .collect();
            assert_eq!(admitted.load(Ordering::SeqCst), SLOTS as usize);
            assert_eq!(b.stats().probes_in_flight, SLOTS);
            for ticket in tickets.into_iter().flatten() {
                assert!(ticket.probe);
                b.settle(ticket, Outcome::Success, probe_time);
            }
            assert_eq!(b.stats().state, State::Closed);
        }
        let stats = b.stats();
        assert_eq!(stats.rejected, (ROUNDS * (THREADS - SLOTS as usize)) as u64);
    }

    /// Opened at 0 by one failure, half-open from 1; probes may hold a slot for 5 seconds.
    fn half_open_at_one(half_open_max_calls: u32) -> Breaker {
        let b = breaker(Config {
            failure_threshold: 1,
            reset_timeout: 1.0,
            probe_timeout: Some(5.0),
            half_open_max_calls,
            ..Config::default()
        });
        run(&b, Outcome::Failure, 0.0);
        b
    }

    #[test]
    fn a_probe_that_never_reports_frees_its_slot_after_probe_timeout() {
        let b = half_open_at_one(1);
        let hung = admitted(&b, 1.0);
        assert!(hung.probe);
        let full = Err(Rejected {
            state: State::HalfOpen,
            retry_after: 0.0,
        });
        assert_eq!(b.admit(5.999).0, full, "still within its bound");
        let next = admitted(&b, 6.0);
        assert!(next.probe, "the slot is free again at the bound");
        assert_eq!(b.stats().probes_expired, 1);
        assert_eq!(b.stats().probes_in_flight, 1);
        let t = b.settle(next, Outcome::Success, 6.5).expect("closes");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        // The hung probe finally fails: counted, but it cannot reopen a breaker that has
        // moved on without it.
        assert_eq!(b.settle(hung, Outcome::Failure, 100.0), None);
        let stats = b.stats();
        assert_eq!(stats.state, State::Closed);
        assert_eq!((stats.total_failures, stats.total_successes), (2, 1));
        assert_eq!(stats.failure_count, 0);
    }

    #[test]
    fn a_probe_reporting_after_its_bound_is_ignored_even_if_nobody_took_its_slot() {
        let b = half_open_at_one(1);
        let slow = admitted(&b, 1.0);
        assert_eq!(
            b.settle(slow, Outcome::Success, 6.0),
            None,
            "too late to close"
        );
        let stats = b.stats();
        assert_eq!(stats.state, State::HalfOpen);
        assert_eq!((stats.total_successes, stats.probes_expired), (1, 1));
        assert_eq!(stats.probes_in_flight, 0);
        let slow = admitted(&b, 6.0);
        assert_eq!(
            b.settle(slow, Outcome::Failure, 11.0),
            None,
            "too late to reopen"
        );
        assert_eq!(b.stats().state, State::HalfOpen);
        // A probe within its bound still decides.
        let quick = admitted(&b, 11.0);
        let t = b.settle(quick, Outcome::Failure, 15.999).expect("reopens");
        assert_eq!(t.reason, Reason::ProbeFailed);
    }

    #[test]
    fn a_late_probe_cannot_touch_the_probe_that_replaced_it() {
        let b = half_open_at_one(1);
        let hung = admitted(&b, 1.0);
        let replacement = admitted(&b, 6.0);
        assert_eq!(b.settle(hung, Outcome::Failure, 7.0), None);
        assert_eq!(b.settle(hung, Outcome::Ignored, 7.0), None);
        assert_eq!(
            b.stats().probes_in_flight,
            1,
            "the replacement keeps its slot"
        );
        assert!(b.admit(7.0).0.is_err());
        let t = b
            .settle(replacement, Outcome::Failure, 7.0)
            .expect("the replacement decides");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
    }

    #[test]
    fn expired_slots_are_reused_so_reservations_stay_bounded() {
        const SLOTS: u32 = 3;
        let b = half_open_at_one(SLOTS);
        let mut now = 1.0;
        let mut hung = Vec::new();
        for _ in 0..100 {
            for _ in 0..SLOTS {
                hung.push(admitted(&b, now));
            }
            assert!(b.admit(now).0.is_err());
            assert_eq!(b.stats().probes_in_flight, SLOTS);
            now += 5.0;
        }
        assert_eq!(b.stats().probes_expired, u64::from(SLOTS) * 99);
        for ticket in hung {
            b.settle(ticket, Outcome::Failure, now);
        }
        let stats = b.stats();
        assert_eq!(stats.state, State::HalfOpen, "no late failure reopened it");
        assert_eq!(stats.probes_in_flight, 0);
        assert_eq!(stats.probes_expired, u64::from(SLOTS) * 100);
        assert_eq!(stats.total_failures, 1 + u64::from(SLOTS) * 100);
    }

    #[test]
    fn an_unsettled_probe_from_an_earlier_half_open_period_is_forgotten() {
        let b = half_open_at_one(1);
        let hung = admitted(&b, 1.0);
        b.trip(2.0);
        let fresh = admitted(&b, 3.0);
        assert_eq!(b.stats().probes_in_flight, 1, "only the fresh reservation");
        assert_eq!(b.settle(hung, Outcome::Success, 3.0), None);
        assert!(
            b.admit(3.0).0.is_err(),
            "the fresh probe still holds the slot"
        );
        assert!(b.settle(fresh, Outcome::Success, 3.0).is_some());
    }

    #[test]
    fn probe_timeout_defaults_to_reset_timeout_but_at_least_thirty_seconds() {
        let with = |reset_timeout, probe_timeout| Config {
            reset_timeout,
            probe_timeout,
            ..Config::default()
        };
        assert_eq!(Config::default().probe_timeout(), 30.0);
        assert_eq!(with(0.0, None).probe_timeout(), 30.0);
        assert_eq!(with(120.0, None).probe_timeout(), 120.0);
        assert_eq!(with(120.0, Some(2.5)).probe_timeout(), 2.5);
        let b = breaker(with(0.0, None));
        b.trip(0.0);
        let hung = admitted(&b, 0.0);
        assert!(b.admit(29.999).0.is_err());
        assert!(admitted(&b, 30.0).probe);
        assert_eq!(b.settle(hung, Outcome::Success, 31.0), None);
    }
}
