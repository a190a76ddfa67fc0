//! Sharing a breaker through a Redis store: the thread that publishes its changes, reads the
//! fleet's, and holds its half-open probe reservations.
//!
//! # In the store
//!
//! - `<key>` (`tidegate:breaker:<name>` by default): while the fleet's breaker is open or
//!   half-open, a JSON record `{"state": "open", "until": <Unix seconds>, "open_for":
//!   <seconds>, "by": "<host>:<pid>:<n>"}`, written by whoever opened it and kept until the open
//!   period plus a probe's bound is over. Absent: closed. Every write is announced on the
//!   channel of the same name.
//! - `<key>:probe:<i>` for `i < half_open_max_calls`: a probe reservation, set only when absent
//!   (`SET NX`) by a breaker that has calls to probe with, to its own identity, with an expiry
//!   of `probe_timeout` plus two poll intervals that its holder renews on every poll. A holder
//!   that crashes stops renewing, and the reservation is free again within that time.
//!
//! # The thread
//!
//! One per shared breaker (plus one that waits for change notices and wakes it). Once per
//! `poll_interval`, at once on a notice or a local change, and just before the fleet's open
//! period ends, it: publishes the local change waiting in the breaker's outbox (an open writes
//! the record, a close deletes the record it replaces, if it is still that one); reads the
//! record and leaves what it says in the breaker's inbox; takes, renews or gives back probe
//! reservations and tells the breaker how many it holds. When the store cannot be reached the
//! breaker goes by its own rules (one warning), until a poll gets through (one more).
//!
//! A request never waits for any of this: it only sets a flag and wakes the thread.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Breaker, Shared, State};
use crate::maintenance::MIN_POLL_INTERVAL;
use crate::store::{self, Link, Reach, Reply, StoreError, Uri};

/// How long before the fleet's open period ends a breaker with calls waiting takes its probe
/// reservation, so the first call after it can probe.
const LEAD: f64 = 0.25;

/// Deletes `KEYS[1]` only while it holds `ARGV[1]`.
const DELETE_IF: &[u8] = b"if redis.call('get', KEYS[1]) == ARGV[1] then \
    return redis.call('del', KEYS[1]) else return 0 end";

/// Sets the expiry of `KEYS[1]` to `ARGV[2]` ms only while it holds `ARGV[1]`.
const RENEW_IF: &[u8] = b"if redis.call('get', KEYS[1]) == ARGV[1] then \
    return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// How a shared breaker reaches its fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    pub uri: Uri,
    /// The breaker's name, for the key and the warnings.
    pub name: String,
    pub poll_interval: Duration,
}

impl FleetConfig {
    pub fn key(&self) -> String {
        self.uri.breaker_key(&self.name)
    }

    fn interval(&self) -> Duration {
        self.poll_interval.max(MIN_POLL_INTERVAL)
    }
}

/// What the breaker's key holds while the fleet's breaker is open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub state: String,
    /// Unix seconds at which probes may start.
    pub until: f64,
    /// The whole open period, seconds (so a re-trip's backoff goes on from it).
    pub open_for: f64,
    /// Who opened it: `<host>:<pid>:<n>`.
    pub by: String,
}

impl Record {
    /// Reads a record without trusting it.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let record: Self = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
        if record.state != "open" {
            return Err(format!("state {:?} is not \"open\"", record.state));
        }
        if !(record.until.is_finite() && record.open_for.is_finite() && record.open_for >= 0.0) {
            return Err("until and open_for must be finite, open_for >= 0".to_owned());
        }
        Ok(record)
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

type Warn = dyn Fn(&str) + Send + Sync;

/// Flags the breaker's callers set and its threads read; no lock on the request path but
/// the short one that finds the thread to wake.
#[derive(Default)]
struct Signals {
    stopped: AtomicBool,
    /// A local change waits in the outbox.
    changed: AtomicBool,
    /// A half-open call found no reservation to probe under.
    demand: AtomicBool,
    /// The notice thread heard of a change elsewhere.
    noticed: AtomicBool,
    worker: Mutex<Option<Thread>>,
    /// The process the threads run in (0: none yet).
    pid: AtomicU32,
}

impl Signals {
    fn wake(&self) {
        if let Some(worker) = &*self.worker.lock() {
            worker.unpark();
        }
    }
}

/// A shared breaker's link to its fleet: owns the threads, ends them when dropped.
pub struct Fleet {
    config: FleetConfig,
    core: Weak<Breaker>,
    signals: Arc<Signals>,
    warn: Arc<Warn>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.signals.stopped.store(true, Ordering::Release);
        self.signals.wake();
    }
}

impl Fleet {
    /// Starts sharing `core` (made with [`Breaker::shared`]) through the store.
    pub fn start(config: FleetConfig, core: &Arc<Breaker>, warn: Arc<Warn>) -> Self {
        let fleet = Self {
            config,
            core: Arc::downgrade(core),
            signals: Arc::default(),
            warn,
        };
        fleet.spawn();
        fleet
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The breaker changed state here: publish soon.
    pub fn changed(&self) {
        self.signals.changed.store(true, Ordering::Release);
        self.signals.wake();
    }

    /// A half-open call was refused for want of a reservation: try for one soon.
    pub fn wants_probe(&self) {
        if !self.signals.demand.swap(true, Ordering::AcqRel) {
            self.signals.wake();
        }
    }

    /// Starts the threads again in a process forked from the one that had them. Cheap enough
    /// for the request path: every 64th call of a thread asks for the process id.
    #[inline]
    pub fn watch(&self) {
        thread_local! {
            static CALLS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
        }
        let due = CALLS.with(|calls| {
            let next = calls.get().wrapping_add(1);
            calls.set(next);
            next % 64 == 0
        });
        if due && self.signals.pid.load(Ordering::Acquire) != std::process::id() {
            self.spawn();
        }
    }

    #[cold]
    fn spawn(&self) {
        let pid = std::process::id();
        let previous = self.signals.pid.load(Ordering::Acquire);
        if previous == pid
            || self
                .signals
                .pid
                .compare_exchange(previous, pid, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let (core, signals, config, warn) = (
            self.core.clone(),
            self.signals.clone(),
            self.config.clone(),
            self.warn.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("tidegate-breaker".to_owned())
            .spawn(move || Worker::new(config, warn).run(&core, &signals));
        match spawned {
            Ok(handle) => *self.signals.worker.lock() = Some(handle.thread().clone()),
            Err(err) => {
                self.signals.pid.store(0, Ordering::Release);
                (self.warn)(&format!(
                    "circuit breaker '{}': cannot start its store thread ({err}); it stays local",
                    self.config.name
                ));
                return;
            }
        }
        let (signals, config) = (self.signals.clone(), self.config.clone());
        // Without the notice thread, changes elsewhere still arrive within a poll interval.
        let _ = std::thread::Builder::new()
            .name("tidegate-breaker-notices".to_owned())
            .spawn(move || run_notices(&signals, &config));
    }
}

/// Waits for change notices on the breaker's channel and wakes the worker for each.
fn run_notices(signals: &Signals, config: &FleetConfig) {
    let mut link = Link::default();
    let key = config.key();
    while !signals.stopped.load(Ordering::Acquire) {
        if link.wait(Some((&config.uri, &key)), config.interval()) {
            signals.noticed.store(true, Ordering::Release);
            signals.wake();
        }
    }
}

/// What the worker thread knows; owned by it alone.
struct Worker {
    config: FleetConfig,
    warn: Arc<Warn>,
    key: String,
    /// This breaker's identity in the store.
    me: String,
    link: Link,
    reach: Reach,
    /// A bad record was warned about (until a good read).
    warned: bool,
    /// The record the local state follows, as read or written.
    following: Option<(Vec<u8>, Record)>,
    /// The probe reservations held, by slot.
    held: Vec<u32>,
    /// `(rejected, probes_started)` at the last poll: calls came when they changed.
    seen: (u64, u64),
    last_poll: Instant,
}

impl Worker {
    fn new(config: FleetConfig, warn: Arc<Warn>) -> Self {
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        Self {
            key: config.key(),
            me: format!("{}:{}:{n}", store::host_name(), std::process::id()),
            config,
            warn,
            link: Link::default(),
            reach: Reach::default(),
            warned: false,
            following: None,
            held: Vec::new(),
            seen: (0, 0),
            last_poll: Instant::now(),
        }
    }

    fn run(mut self, core: &Weak<Breaker>, signals: &Signals) {
        loop {
            let wait = {
                let Some(breaker) = core.upgrade() else {
                    break;
                };
                if signals.stopped.load(Ordering::Acquire) {
                    break;
                }
                signals.changed.store(false, Ordering::Release);
                signals.noticed.store(false, Ordering::Release);
                let demand = signals.demand.swap(false, Ordering::AcqRel);
                self.last_poll = Instant::now();
                self.poll(&breaker, demand)
            };
            if !self.sleep(signals, wait) {
                break;
            }
        }
        // Leaving: give back what is held rather than make the fleet wait for it to expire.
        let _ = self.release_all();
    }

    /// Sleeps up to `wait`, less when woken for a reason to poll; false once stopped.
    fn sleep(&self, signals: &Signals, wait: Duration) -> bool {
        let deadline = self.last_poll + wait;
        // Demand wakes a poll at most four times per interval, however many calls ask.
        let demand_after = self.last_poll + self.config.interval() / 4;
        loop {
            if signals.stopped.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            let urgent =
                signals.changed.load(Ordering::Acquire) || signals.noticed.load(Ordering::Acquire);
            let demanded = signals.demand.load(Ordering::Acquire);
            if now >= deadline || (demanded && now >= demand_after) {
                return true;
            }
            if urgent {
                // Polls stay at least this far apart, however fast notices come.
                std::thread::sleep(MIN_POLL_INTERVAL.saturating_sub(self.last_poll.elapsed()));
                return true;
            }
            let until = if demanded {
                deadline.min(demand_after)
            } else {
                deadline
            };
            std::thread::park_timeout(until.saturating_duration_since(now));
        }
    }

    /// One exchange with the store; how long to wait before the next.
    fn poll(&mut self, breaker: &Breaker, demand: bool) -> Duration {
        match self.exchange(breaker, demand) {
            Ok(()) => {
                if self.reach.back() {
                    (self.warn)(&format!(
                        "circuit breaker '{}': store {} is back; sharing state again",
                        self.config.name, self.config.uri
                    ));
                }
            }
            Err(err) => {
                // What is held will expire; until the store answers, the breaker is local.
                self.held.clear();
                breaker.set_allowance(None);
                if self.reach.lost() {
                    (self.warn)(&format!(
                        "circuit breaker '{}': store {} is lost ({err}); going on as a local breaker",
                        self.config.name, self.config.uri
                    ));
                }
            }
        }
        let interval = self.config.interval();
        match &self.following {
            // Wake just before the open period ends, to take a reservation in time.
            Some((_, record)) => {
                let due = record.until - crate::clock::now_unix_f64() - LEAD / 2.0;
                if due > 0.0 {
                    interval.min(Duration::from_secs_f64(due.min(1e9)).max(MIN_POLL_INTERVAL))
                } else {
                    interval
                }
            }
            None => interval,
        }
    }

    fn exchange(&mut self, breaker: &Breaker, demand: bool) -> Result<(), StoreError> {
        if let Some((change, count)) = breaker.take_publish() {
            if let Err(err) = self.publish(breaker, change) {
                breaker.unpublish(change, count);
                return Err(err);
            }
        }
        let published = breaker.published();
        let key = self.key.clone();
        let read = self.link.with(&self.config.uri, |conn| conn.get(&key))?;
        match read {
            Some(bytes) if self.following.as_ref().is_some_and(|(b, _)| *b == bytes) => {}
            Some(bytes) => match Record::parse(&bytes) {
                Ok(record) => {
                    self.warned = false;
                    if record.by != self.me {
                        breaker.offer(
                            Shared::Open {
                                until: record.until,
                                open_for: record.open_for,
                            },
                            published,
                        );
                    }
                    self.following = Some((bytes, record));
                }
                Err(why) => {
                    if !std::mem::replace(&mut self.warned, true) {
                        (self.warn)(&format!(
                            "circuit breaker '{}': store {}: the key {} holds no breaker record \
                             ({why}); ignoring it",
                            self.config.name, self.config.uri, self.key
                        ));
                    }
                }
            },
            None => {
                self.warned = false;
                if self.following.take().is_some() {
                    breaker.offer(Shared::Closed, published);
                }
            }
        }
        let stats = breaker.stats();
        let seen = (stats.rejected, stats.probes_started);
        let calls = demand || seen != std::mem::replace(&mut self.seen, seen);
        let due = self
            .following
            .as_ref()
            .is_some_and(|(_, r)| r.until - crate::clock::now_unix_f64() <= LEAD);
        let busy = stats.probes_in_flight > 0 && stats.state == State::HalfOpen;
        if due && (calls || busy) {
            self.reserve(breaker.config().half_open_max_calls, breaker)?;
        } else {
            self.release_all()?;
        }
        breaker.set_allowance(Some(u32::try_from(self.held.len()).unwrap_or(u32::MAX)));
        Ok(())
    }

    /// How long a reservation lives without renewal.
    fn reservation_ttl(&self, breaker: &Breaker) -> Duration {
        Duration::from_secs_f64(breaker.config().probe_timeout().min(1e9))
            .saturating_add(self.config.interval().saturating_mul(2))
    }

    fn publish(&mut self, breaker: &Breaker, change: Shared) -> Result<(), StoreError> {
        let key = self.key.clone();
        match change {
            Shared::Open { until, open_for } => {
                let record = Record {
                    state: "open".to_owned(),
                    until,
                    open_for,
                    by: self.me.clone(),
                };
                let bytes = record.to_bytes();
                let left = (until - crate::clock::now_unix_f64()).clamp(0.0, 1e9);
                let ttl = Duration::from_secs_f64(left)
                    .saturating_add(self.reservation_ttl(breaker))
                    .saturating_add(self.config.interval().saturating_mul(2));
                let written = self.link.with(&self.config.uri, |conn| {
                    conn.set_for(&key, &bytes, ttl, false)?;
                    conn.call(&[b"PUBLISH", key.as_bytes(), b"changed"])
                });
                written?;
                self.following = Some((bytes, record));
            }
            Shared::Closed => {
                let Some((bytes, _)) = &self.following else {
                    return Ok(());
                };
                let bytes = bytes.clone();
                // Only the record this close ends: a newer open from elsewhere stands.
                self.link.with(&self.config.uri, |conn| {
                    check(conn.pipeline(&[
                        &[b"EVAL", DELETE_IF, b"1", key.as_bytes(), &bytes],
                        &[b"PUBLISH", key.as_bytes(), b"changed"],
                    ])?)
                })?;
                self.following = None;
            }
        }
        Ok(())
    }

    /// Renews the reservations held and takes free ones, up to `max`.
    fn reserve(&mut self, max: u32, breaker: &Breaker) -> Result<(), StoreError> {
        let ttl = self.reservation_ttl(breaker);
        let ms = ttl.as_millis().max(1).to_string();
        let (key, me) = (self.key.clone(), self.me.clone());
        let held = std::mem::take(&mut self.held);
        let mut kept = Vec::with_capacity(held.len());
        self.link.with(&self.config.uri, |conn| {
            for slot in held {
                let probe = format!("{key}:probe:{slot}");
                let renewed = conn.call(&[
                    b"EVAL",
                    RENEW_IF,
                    b"1",
                    probe.as_bytes(),
                    me.as_bytes(),
                    ms.as_bytes(),
                ])?;
                if matches!(renewed, Reply::Int(1)) {
                    kept.push(slot);
                }
            }
            for slot in 0..max {
                if kept.contains(&slot) {
                    continue;
                }
                let probe = format!("{key}:probe:{slot}");
                if conn.set_for(&probe, me.as_bytes(), ttl, true)? {
                    kept.push(slot);
                }
            }
            if !kept.is_empty() {
                // The record lives at least as long as a reservation on it (never shortened;
                // a server before Redis 7 refuses GT, and the record keeps its own expiry).
                let _ = conn.pipeline(&[&[b"PEXPIRE", key.as_bytes(), ms.as_bytes(), b"GT"]])?;
            }
            Ok(())
        })?;
        self.held = kept;
        Ok(())
    }

    fn release_all(&mut self) -> Result<(), StoreError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let (key, me) = (self.key.clone(), self.me.clone());
        let held = std::mem::take(&mut self.held);
        self.link.with(&self.config.uri, |conn| {
            for slot in held {
                let probe = format!("{key}:probe:{slot}");
                conn.call(&[b"EVAL", DELETE_IF, b"1", probe.as_bytes(), me.as_bytes()])?;
            }
            Ok(())
        })
    }
}

/// Turns the first error reply of a pipeline into an error.
fn check(replies: Vec<Reply>) -> Result<(), StoreError> {
    match replies.into_iter().find(|r| matches!(r, Reply::Error(_))) {
        Some(Reply::Error(message)) => Err(StoreError::Refused(message)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_without_trusting_them() {
        let good = br#"{"state":"open","until":1e9,"open_for":30,"by":"h:1:0"}"#;
        let record = Record::parse(good).expect("good");
        assert_eq!((record.until, record.open_for), (1e9, 30.0));
        assert_eq!(Record::parse(&record.to_bytes()), Ok(record));
        for bad in [
            &b""[..],
            b"garbage",
            b"[]",
            br#"{"state":"closed","until":1,"open_for":1,"by":""}"#,
            br#"{"state":"open","until":1,"open_for":-1,"by":""}"#,
            br#"{"state":"open","until":"soon","open_for":1,"by":""}"#,
            br#"{"state":"open","open_for":1,"by":""}"#,
        ] {
            assert!(
                Record::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_breaker_key_follows_the_uri() {
        let config = FleetConfig {
            uri: Uri::parse("store", "redis://localhost?key=app").expect("uri"),
            name: "db".to_owned(),
            poll_interval: Duration::ZERO,
        };
        assert_eq!(config.key(), "app:db");
        assert_eq!(config.interval(), MIN_POLL_INTERVAL);
    }

    #[test]
    fn reach_says_lost_and_back_once_each() {
        let mut reach = Reach::default();
        assert!(!reach.back());
        assert!(reach.lost());
        assert!(!reach.lost());
        assert!(reach.back());
        assert!(!reach.back());
    }
}
