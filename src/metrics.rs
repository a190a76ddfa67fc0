//! Metrics: counters, histograms and gauges in atomics, summed over a server's workers, shown
//! in the Prometheus text format or OpenMetrics.
//!
//! Every process records into one slot (see `layout`). By default the slot is process-local.
//! Under Gunicorn, the master creates a shared-memory file of fixed size ([`create_shared`]),
//! each worker takes a slot of it at start ([`attach`]), and the master folds a worker's
//! counters into the file's totals slot when the worker exits ([`fold`]); a scrape that finds
//! a dead worker's slot folds it itself. A scrape in any worker sums the totals and the live
//! slots, under an `flock` that folds also take, so no counter is seen twice or goes back.
//!
//! The per-request calls ([`record`], [`admit`], [`release`], [`observe_queue_time`]) are one
//! atomic load to find the slot, then one or two relaxed atomic adds. They never lock, never
//! allocate and never touch the file system.
//!
//! `tidegate_requests_total{outcome,reason}`: each request is counted once, when it is decided,
//! under one of the pairs of [`Outcome`]; `failed_fast{reason="dependency"}` counts answers the
//! app turned into the dependency 503 after its request was admitted or exempt, so it comes on
//! top of that request's first count.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use crate::errors::{ArgError, MetricsError};

pub mod layout;
mod py;
pub mod render;
#[cfg(unix)]
mod shm;

pub use layout::{Histogram, NamedSums, Sums};
pub use py::{
    attach_py, attached_py, breaker_call_py, breaker_state_py, create_py, enable_py, families_py,
    fold_py, health_check_py, prepare_module, queue_time_py, record_py, release_py, scrape_py,
    set_gauge_py,
};
pub use render::Format;

use layout::{region_words, slot_offset, Region, Slot, SLOT_WORDS};

/// Whether decisions are counted at all: off until something wants the numbers (an adapter
/// with a metrics path or `metrics=True`, a collector, a shared file), so an app that never
/// looks at metrics pays one relaxed load per decision for them.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// From now on, adapters that follow the default count their decisions.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether adapters that follow the default count their decisions.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The most worker slots a shared file may have.
pub const MAX_SLOTS: usize = 4096;
/// Worker slots in a shared file unless told otherwise.
pub const DEFAULT_SLOTS: usize = 64;

/// How one request was decided: the `outcome` and `reason` labels of
/// `tidegate_requests_total`. Each pair is one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// Passed every check and went to the app (holding a permit when there is a gate).
    Admitted,
    /// An exempt path or view: went to the app without a permit.
    Exempt,
    /// A route tidegate answers itself: readiness, liveness, metrics.
    Probe,
    /// The overload 503: the gate was full.
    ShedOverload,
    /// The overload 503: the request had waited too long in front of the app.
    ShedQueueTime,
    /// The overload 503: its priority's share of the limit was full.
    ShedPriority,
    /// The maintenance 503.
    RefusedMaintenance,
    /// The dependency 503: the app raised an open breaker's error.
    FailedFastDependency,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Admitted,
        Outcome::Exempt,
        Outcome::Probe,
        Outcome::ShedOverload,
        Outcome::ShedQueueTime,
        Outcome::ShedPriority,
        Outcome::RefusedMaintenance,
        Outcome::FailedFastDependency,
    ];

    /// The `(outcome, reason)` label values.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Admitted => ("admitted", "none"),
            Outcome::Exempt => ("exempt", "none"),
            Outcome::Probe => ("probe", "none"),
            Outcome::ShedOverload => ("shed", "overload"),
            Outcome::ShedQueueTime => ("shed", "queue_time"),
            Outcome::ShedPriority => ("shed", "priority"),
            Outcome::RefusedMaintenance => ("refused", "maintenance"),
            Outcome::FailedFastDependency => ("failed_fast", "dependency"),
        }
    }

    pub fn from_labels(outcome: &str, reason: &str) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.labels() == (outcome, reason))
    }
}

/// A breaker's state, the `state` label of `tidegate_breaker_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.label() == label)
    }

    /// The code a slot stores (0 means "not reported").
    fn code(self) -> u64 {
        self as u64 + 1
    }

    pub(crate) fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// What became of one call through a breaker, the `outcome` label of
/// `tidegate_breaker_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CallOutcome {
    /// The call ran and returned.
    Success,
    /// The call ran and raised a counted exception.
    Failure,
    /// The call ran and raised an exception the breaker does not count.
    Ignored,
    /// The breaker refused the call (open, or no probe slot left).
    Rejected,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 4] = [
        CallOutcome::Success,
        CallOutcome::Failure,
        CallOutcome::Ignored,
        CallOutcome::Rejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CallOutcome::Success => "success",
            CallOutcome::Failure => "failure",
            CallOutcome::Ignored => "ignored",
            CallOutcome::Rejected => "rejected",
        }
    }

    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.label() == label)
    }
}

/// What a named entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NamedKind {
    Breaker = 1,
    Check = 2,
}

impl NamedKind {
    pub(crate) fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(NamedKind::Breaker),
            2 => Some(NamedKind::Check),
            _ => None,
        }
    }
}

/// A breaker's or health check's entry in the metrics: keep it and report through it. An entry
/// that did not fit (more than `layout::NAMED_CAPACITY` names, or a name longer than
/// `layout::NAME_BYTES` bytes) reports nothing.
#[derive(Debug)]
pub struct Named {
    kind: NamedKind,
    name: String,
    /// The entry in the region in use; `usize::MAX` when it did not fit.
    entry: AtomicUsize,
}

const NO_ENTRY: usize = usize::MAX;

impl Named {
    pub fn set_breaker_state(&self, state: BreakerState) {
        if let Some(slot) = slot() {
            slot.set_named_gauge(self.entry.load(Ordering::Relaxed), state.code());
        }
    }

    pub fn count_call(&self, outcome: CallOutcome) {
        if let Some(slot) = slot() {
            slot.count_call(self.entry.load(Ordering::Relaxed), outcome);
        }
    }

    pub fn set_check_up(&self, up: bool) {
        if let Some(slot) = slot() {
            slot.set_named_gauge(self.entry.load(Ordering::Relaxed), 1 + u64::from(up));
        }
    }
}

const LOCAL_WORDS: usize = region_words(1);
/// The process-local region: a header for the name table, an unused totals slot, one slot.
static LOCAL: [AtomicU64; LOCAL_WORDS] = [const { AtomicU64::new(0) }; LOCAL_WORDS];

static LOCAL_REGION: Region<'static> = Region::fixed(&LOCAL, 1);

fn local() -> Region<'static> {
    LOCAL_REGION
}

/// A shared file this process holds a slot of.
struct Attached {
    path: PathBuf,
    file: File,
    region: Region<'static>,
    slot: Slot<'static>,
    index: usize,
}

static ATTACHED: OnceLock<Attached> = OnceLock::new();
/// Every name this process registered, so that they follow it into a shared file.
static NAMES: Mutex<Vec<Arc<Named>>> = Mutex::new(Vec::new());

/// The slot this process records into.
#[inline]
fn slot() -> Option<Slot<'static>> {
    match ATTACHED.get() {
        Some(attached) => Some(attached.slot),
        None => local().slot(Some(0)),
    }
}

/// Counts one request's decision.
#[inline]
pub fn record(outcome: Outcome) {
    if let Some(slot) = slot() {
        slot.count(outcome);
    }
}

/// Counts an admitted request and adds it to those in flight. Pair with [`release`].
#[inline]
pub fn admit() {
    if let Some(slot) = slot() {
        slot.count(Outcome::Admitted);
        slot.enter();
    }
}

/// An admitted request is finished (its permit given back): one fewer in flight, and its time
/// from admission to release goes into `tidegate_request_duration_seconds`.
#[inline]
pub fn release(duration: Duration) {
    if let Some(slot) = slot() {
        slot.leave();
        slot.observe_duration(duration);
    }
}

/// How long a request waited in front of the app (from `X-Request-Start`).
#[inline]
pub fn observe_queue_time(wait: Duration) {
    if let Some(slot) = slot() {
        slot.observe_queue_time(wait);
    }
}

pub fn set_concurrency_limit(limit: usize) {
    if let Some(slot) = slot() {
        slot.set_limit(limit as u64);
    }
}

pub fn set_maintenance_active(active: bool) {
    if let Some(slot) = slot() {
        slot.set_maintenance(active);
    }
}

pub fn set_draining(draining: bool) {
    if let Some(slot) = slot() {
        slot.set_draining(draining);
    }
}

/// The entry of the breaker `name` (the same one for every breaker of that name).
pub fn breaker(name: &str) -> Arc<Named> {
    register(NamedKind::Breaker, name)
}

/// The entry of the health check `name`.
pub fn health_check(name: &str) -> Arc<Named> {
    register(NamedKind::Check, name)
}

static WARN: OnceLock<fn(&str)> = OnceLock::new();
static WARNED_FULL: AtomicBool = AtomicBool::new(false);

/// Where warnings go (the `tidegate` logger, once the Python module is loaded).
pub fn set_warn(warn: fn(&str)) {
    let _ = WARN.set(warn);
}

fn warn(message: &str) {
    if let Some(warn) = WARN.get() {
        warn(message);
    }
}

fn register(kind: NamedKind, name: &str) -> Arc<Named> {
    let mut names = NAMES.lock();
    if let Some(known) = names.iter().find(|n| n.kind == kind && n.name == name) {
        return known.clone();
    }
    let entry = match ATTACHED.get() {
        Some(attached) => shared_entry(attached, kind, name),
        None => local().entry(kind, name),
    };
    if entry.is_none() && !WARNED_FULL.swap(true, Ordering::Relaxed) {
        warn(&format!(
            "metrics: no room for {} {name:?} (at most {} breakers and checks, names of at most \
             {} bytes); it is not shown, nor any other that does not fit",
            match kind {
                NamedKind::Breaker => "breaker",
                NamedKind::Check => "health check",
            },
            layout::NAMED_CAPACITY,
            layout::NAME_BYTES,
        ));
    }
    let named = Arc::new(Named {
        kind,
        name: name.to_owned(),
        entry: AtomicUsize::new(entry.unwrap_or(NO_ENTRY)),
    });
    names.push(named.clone());
    named
}

fn shared_entry(attached: &Attached, kind: NamedKind, name: &str) -> Option<usize> {
    let _lock = lock(&attached.file).ok()?;
    attached.region.entry(kind, name)
}

/// What a scrape of this process shows: the shared file's sums when it holds a slot of one,
/// else its own.
pub fn sums() -> Result<Sums, MetricsError> {
    match ATTACHED.get() {
        Some(attached) => {
            let _lock = lock(&attached.file)
                .map_err(|err| MetricsError::io("lock", &attached.path, err))?;
            Ok(attached.region.sums(&pid_alive, true, true))
        }
        None => Ok(local().sums(&|_| true, false, false)),
    }
}

/// The shared file this process holds a slot of, and the slot's index.
pub fn attached() -> Option<(&'static Path, usize)> {
    ATTACHED.get().map(|a| (a.path.as_path(), a.index))
}

/// Creates a shared metrics file with `slots` worker slots in `directory`, named after this
/// process and a random part so that servers sharing a directory never share a file.
pub fn create_shared(directory: &Path, slots: usize) -> Result<PathBuf, MetricsError> {
    if !(1..=MAX_SLOTS).contains(&slots) {
        return Err(ArgError::value(
            "slots",
            format!("must be an integer from 1 to {MAX_SLOTS}, got {slots}"),
        )
        .into());
    }
    let pid = std::process::id();
    let bytes = (region_words(slots) * 8) as u64;
    for attempt in 0u32..8 {
        let nonce = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            (pid, attempt),
        );
        let path = directory.join(format!("tidegate-metrics-{pid}-{nonce:016x}.shm"));
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(MetricsError::io("create", &path, err)),
        };
        let made = file
            .set_len(bytes)
            .map_err(|err| MetricsError::io("size", &path, err))
            .and_then(|()| map(&file, &path, bytes))
            .map(|mapping| {
                let words = mapping.words();
                if let Some(region) = Region::new(words, slots) {
                    region.init_header(pid);
                }
            });
        if let Err(err) = made {
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
        return Ok(path);
    }
    Err(MetricsError::io(
        "create",
        directory,
        std::io::Error::other("no free file name"),
    ))
}

/// Takes a slot of the shared file at `path` for this process, which from then on records
/// there and scrapes the whole file. Call once, when a worker starts, before it serves.
pub fn attach(path: &Path) -> Result<usize, MetricsError> {
    enable();
    let mut names = NAMES.lock();
    if let Some(attached) = ATTACHED.get() {
        return Err(MetricsError::AlreadyAttached {
            path: attached.path.clone(),
        });
    }
    let (file, mapping) = open(path)?;
    let words = mapping.leak();
    let region = Region::from_header(words).map_err(|reason| MetricsError::BadFile {
        path: path.to_owned(),
        reason,
    })?;
    let index = {
        let _lock = lock(&file).map_err(|err| MetricsError::io("lock", path, err))?;
        let index = region
            .claim(std::process::id(), &pid_alive)
            .ok_or_else(|| MetricsError::Full {
                path: path.to_owned(),
                slots: region.slots(),
            })?;
        let (Some(slot), Some(old)) = (region.slot(Some(index)), local().slot(Some(0))) else {
            return Err(MetricsError::BadFile {
                path: path.to_owned(),
                reason: "slot out of range".to_owned(),
            });
        };
        old.copy_gauges_to(&slot);
        for named in names.iter_mut() {
            let before = named.entry.load(Ordering::Relaxed);
            let after = region.entry(named.kind, &named.name).unwrap_or(NO_ENTRY);
            slot.set_named_gauge(after, old.named_gauge(before));
            named.entry.store(after, Ordering::Relaxed);
        }
        index
    };
    let slot = region.slot(Some(index));
    if let Some(slot) = slot {
        let _ = ATTACHED.set(Attached {
            path: path.to_owned(),
            file,
            region,
            slot,
            index,
        });
    }
    drop(names);
    Ok(index)
}

/// Folds the slot of the process `pid` (which has exited) in the shared file at `path` into
/// its totals and frees it. False when no slot belongs to `pid`.
pub fn fold(path: &Path, pid: u32) -> Result<bool, MetricsError> {
    with_file(path, |region| match region.slot_of(pid) {
        Some(index) => {
            region.fold(index);
            true
        }
        None => false,
    })
}

/// The sums of the shared file at `path`, for a process that holds no slot of it (the
/// master, a test, a tool). Dead processes' slots are folded on the way.
pub fn sums_of_file(path: &Path) -> Result<Sums, MetricsError> {
    with_file(path, |region| region.sums(&pid_alive, true, true))
}

fn with_file<T>(path: &Path, then: impl FnOnce(&Region<'_>) -> T) -> Result<T, MetricsError> {
    let (file, mapping) = open(path)?;
    let region = Region::from_header(mapping.words()).map_err(|reason| MetricsError::BadFile {
        path: path.to_owned(),
        reason,
    })?;
    let _lock = lock(&file).map_err(|err| MetricsError::io("lock", path, err))?;
    Ok(then(&region))
}

#[cfg(unix)]
use shm::{pid_alive, Mapping};

#[cfg(unix)]
fn lock(file: &File) -> std::io::Result<shm::Lock<'_>> {
    shm::Lock::exclusive(file)
}

#[cfg(unix)]
fn map(file: &File, path: &Path, len: u64) -> Result<Mapping, MetricsError> {
    Mapping::new(file, len).map_err(|err| MetricsError::io("map", path, err))
}

#[cfg(unix)]
fn open(path: &Path) -> Result<(File, Mapping), MetricsError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|err| MetricsError::io("open", path, err))?;
    let len = file
        .metadata()
        .map_err(|err| MetricsError::io("read", path, err))?
        .len();
    let expected_at_least = (slot_offset(Some(0)) + SLOT_WORDS) as u64 * 8;
    if len < expected_at_least || len % 8 != 0 {
        return Err(MetricsError::BadFile {
            path: path.to_owned(),
            reason: format!("{len} bytes is not the size of a metrics file"),
        });
    }
    let mapping = map(&file, path, len)?;
    Ok((file, mapping))
}

#[cfg(not(unix))]
mod no_shm {
    //! Without Unix there is no shared file: every process keeps its own metrics.
    pub struct Mapping;
    impl Mapping {
        pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
            &[]
        }
        pub fn leak(self) -> &'static [std::sync::atomic::AtomicU64] {
            &[]
        }
    }
    pub struct Lock;
    pub fn pid_alive(_: u64) -> bool {
        true
    }
}

#[cfg(not(unix))]
use no_shm::{pid_alive, Mapping};

#[cfg(not(unix))]
fn lock(_: &File) -> std::io::Result<no_shm::Lock> {
    Ok(no_shm::Lock)
}

#[cfg(not(unix))]
fn map(_: &File, _: &Path, _: u64) -> Result<Mapping, MetricsError> {
    Err(MetricsError::Unsupported)
}

#[cfg(not(unix))]
fn open(_: &Path) -> Result<(File, Mapping), MetricsError> {
    Err(MetricsError::Unsupported)
}

#[cfg(test)]
mod tests;
