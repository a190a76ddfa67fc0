//! The circuit breaker: stop calling a dependency that keeps failing, probe it now and then,
//! and go back to normal once it answers again.
//!
//! `Breaker` is plain Rust and takes the time as an argument, so every transition is tested
//! with a clock the test controls. `py` is the thin wrapper Python sees.
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
//!
//! # Shared through a store
//!
//! A breaker made with [`Breaker::shared`] keeps the same state machine and adds a mailbox
//! for the thread that talks to the store (`fleet`): each local open or close is left in an
//! outbox for that thread to publish, and what the fleet says (opened or closed elsewhere) is
//! left in an inbox that the next call or state read applies, on its own clock. While the
//! store is reachable, half-open admits a probe only under a reservation that thread holds in
//! the store (`set_allowance`); while it is not, the breaker is a local one. Nothing here
//! waits on anything but its own lock.

use std::collections::VecDeque;
use std::fmt;

use parking_lot::Mutex;

use crate::errors::ArgError;

mod fleet;
mod py;

pub use fleet::{Fleet, FleetConfig};
pub use py::{prepare_module, BreakerPy, CircuitOpenError, TicketPy};

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
    FailureRate {
        failures: u64,
        calls: u64,
    },
    ProbeFailed,
    TimeoutElapsed,
    ProbesSucceeded(u32),
    Manual,
    /// Another breaker of the fleet opened (or its open period is over: half-open).
    OpenedElsewhere,
    /// Another breaker of the fleet closed, or the fleet's open record ran out.
    ClosedElsewhere,
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
            Self::OpenedElsewhere => f.write_str("opened elsewhere in the fleet"),
            Self::ClosedElsewhere => f.write_str("closed elsewhere in the fleet"),
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
    /// Probe slots handed out so far.
    pub probes_started: u64,
}

/// A shared breaker's state as the fleet shares it: a local change it has for the fleet
/// (`Mailbox::outbox`), or what the fleet says, for it to apply at its next look (`inbox`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shared {
    /// Open for `open_for` seconds in all, until the Unix time `until` (half-open once past).
    Open { until: f64, open_for: f64 },
    /// Closed: its probes succeeded, or it was closed by hand.
    Closed,
}

/// The mailbox between a shared breaker and the thread that talks to its store.
#[derive(Debug, Default)]
struct Mailbox {
    shared: bool,
    /// The latest local change not yet taken for publishing; a newer one replaces it.
    outbox: Option<Shared>,
    /// Bumped with every outbox entry, so a read that predates a local change is dropped.
    published: u64,
    inbox: Option<Shared>,
    /// Probe reservations held in the store; `None` while the store is out of reach (then
    /// half-open goes by `half_open_max_calls` alone).
    allowance: Option<u32>,
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
    mail: Mailbox,
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
        let elsewhere = matches!(reason, Reason::OpenedElsewhere | Reason::ClosedElsewhere);
        if !elsewhere {
            match to {
                State::Open => self.publish_open(),
                State::Closed => self.publish(Shared::Closed),
                State::HalfOpen => {}
            }
        }
        Transition {
            from,
            to,
            reason,
            open_for: self.open_for,
        }
    }

    fn publish(&mut self, change: Shared) {
        if self.mail.shared {
            self.mail.outbox = Some(change);
            self.mail.published = self.mail.published.wrapping_add(1);
        }
    }

    fn publish_open(&mut self) {
        if self.mail.shared {
            self.publish(Shared::Open {
                until: crate::clock::now_unix_f64() + self.open_for,
                open_for: self.open_for,
            });
        }
    }

    /// What a look at the breaker changes: what the fleet said, when anything is waiting;
    /// otherwise the lazy open -> half-open step, when it is due.
    fn look(&mut self, config: &Config, now: f64) -> Option<Transition> {
        self.take_inbox(config, now)
            .or_else(|| self.poll(config, now))
    }

    /// Applies what the fleet said, if anything is waiting.
    fn take_inbox(&mut self, config: &Config, now: f64) -> Option<Transition> {
        match self.mail.inbox.take()? {
            Shared::Open { until, open_for } => {
                let left = (until - crate::clock::now_unix_f64()).clamp(0.0, open_for);
                if left <= 0.0 {
                    // The fleet's open period is over: half-open, probes under reservation.
                    return (self.state == State::Closed)
                        .then(|| self.enter(config, State::HalfOpen, Reason::OpenedElsewhere, now))
                        .or_else(|| self.poll(config, now));
                }
                let transition = (self.state != State::Open)
                    .then(|| self.enter(config, State::Open, Reason::OpenedElsewhere, now));
                self.opened_at = now - (open_for - left);
                self.open_for = open_for;
                transition.map(|t| Transition { open_for, ..t })
            }
            Shared::Closed => (self.state != State::Closed)
                .then(|| self.enter(config, State::Closed, Reason::ClosedElsewhere, now)),
        }
    }

    /// How many probes may be in flight now.
    fn probe_limit(&self, config: &Config) -> usize {
        let allowed = self.mail.allowance.unwrap_or(u32::MAX);
        config.half_open_max_calls.min(allowed) as usize
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
            mail: Mailbox::default(),
        };
        Ok(Self {
            config,
            inner: Mutex::new(inner),
        })
    }

    /// A breaker whose changes go to the fleet through [`Breaker::take_publish`] and that
    /// applies what [`Breaker::offer`] brings.
    pub fn shared(config: Config) -> Result<Self, ArgError> {
        let breaker = Self::new(config)?;
        breaker.inner.lock().mail.shared = true;
        Ok(breaker)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The local change waiting to be published, with the count of changes so far.
    pub fn take_publish(&self) -> Option<(Shared, u64)> {
        let mut inner = self.inner.lock();
        let change = inner.mail.outbox.take()?;
        Some((change, inner.mail.published))
    }

    /// Puts back a change that could not be published, unless a newer one came meanwhile.
    pub fn unpublish(&self, change: Shared, published: u64) {
        let mut inner = self.inner.lock();
        if inner.mail.published == published && inner.mail.outbox.is_none() {
            inner.mail.outbox = Some(change);
        }
    }

    /// How many local changes there have been (see [`Breaker::offer`]).
    pub fn published(&self) -> u64 {
        self.inner.lock().mail.published
    }

    /// Leaves what the fleet says for the next look to apply, unless this breaker changed
    /// after `published` was read (then what was read may predate that change). Whether it
    /// was taken.
    pub fn offer(&self, remote: Shared, published: u64) -> bool {
        let mut inner = self.inner.lock();
        let fresh = inner.mail.published == published;
        if fresh {
            inner.mail.inbox = Some(remote);
        }
        fresh
    }

    /// How many probes the fleet lets this breaker run at once (the reservations it holds),
    /// or `None` to go by `half_open_max_calls` alone.
    pub fn set_allowance(&self, allowance: Option<u32>) {
        self.inner.lock().mail.allowance = allowance;
    }

    /// Lets a call through or refuses it, in one step under the lock: half-open hands out at
    /// most `half_open_max_calls` probe slots however many threads race for them, each for
    /// at most `probe_timeout` seconds.
    pub fn admit(&self, now: f64) -> (Result<Ticket, Rejected>, Option<Transition>) {
        let mut inner = self.inner.lock();
        let transition = inner.look(&self.config, now);
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
            State::HalfOpen if inner.probes.len() < inner.probe_limit(&self.config) => {
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
        let transition = inner.look(&self.config, now);
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
            inner.publish_open();
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
            probes_started: inner.last_slot,
        }
    }
}

#[cfg(test)]
mod tests;
