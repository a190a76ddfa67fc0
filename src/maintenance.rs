//! Maintenance mode and drain: state every request checks, set from code, the environment, or a
//! state file shared by every worker process.
//!
//! # Where the state comes from
//!
//! Maintenance is on when any of these says so:
//! - this process (`enable()` on a switch without a state file): source `local`;
//! - the state file: source `file`;
//! - the environment variable (`MAINTENANCE_MODE` by default) set to `1`, `true`, `yes` or `on`
//!   (any case, surrounding blanks ignored): source `env`.
//!
//! Draining is on when this process drains itself (`drain(local=True)`, or any drain without a
//! state file), when the state file says so, or when the whole process drains
//! ([`drain_process`], which a server hook calls on SIGTERM): that last flag is one static
//! every switch of the process reads, so it reaches switches the hook never saw.
//!
//! # Cost per request
//!
//! The effective state lives in one atomic byte. `active()` reads that byte (and now and then
//! the monotonic clock), nothing else: a request never touches the environment or the file. A background
//! thread per switch (no GIL) re-reads the environment variable and stats the file once per
//! `poll_interval` (at least 10 ms apart), reading the file only when its (device, inode, size,
//! mtime, ctime) changed. A slow disk, a hung mount or a FIFO at the path can stall that thread
//! and nothing else; the last good state stands meanwhile.
//!
//! The thread is started with the switch. A process forked from one that had it (a Gunicorn
//! master that loaded the app before forking) has no such thread: a clock read on the request
//! path (every 32nd `active()` of a thread, every `status()` and `draining()`) notices that no
//! poll has happened for longer than the interval allows and starts one.
//!
//! # The state file
//!
//! A JSON object, written by `enable`/`disable`/`drain`/`undrain` (and the CLI):
//!
//! ```json
//! {
//!   "version": 1,
//!   "active": true,
//!   "message": "Upgrading the database",
//!   "until": "2030-01-01T12:00:00Z",
//!   "retry_after": 600,
//!   "draining": false,
//!   "updated_at": "2030-01-01T11:00:00Z"
//! }
//! ```
//!
//! `active` is required; `message` (string), `until` (ISO-8601, an offset or `Z`; no offset is
//! UTC), `retry_after` (whole seconds >= 0) and `draining` (bool) are optional and may be
//! `null` where they are optional. `version`, when present, must be 1. `updated_at` and unknown
//! keys are ignored. A missing file means "not in maintenance, not draining". A file that cannot
//! be read or does not match this shape leaves the last good state standing and logs one
//! warning on the `tidegate` logger until a good read.
//!
//! Writers replace the file atomically (temporary file in the same folder, fsync, rename), so a
//! reader sees the old file or the new one, never a mix. A write keeps the fields it does not
//! change: `enable` keeps `draining`, `drain` keeps the maintenance fields.

mod py;
pub mod state_file;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::{self, Conn, Link, Reach, StoreError};

pub(crate) use py::poll_interval_of;
pub use py::{
    drain_process_py, is_store_uri_py, log_warning, prepare_module, process_draining_py,
    undrain_process_py, write_atomic_py, MaintenanceStatusPy, MaintenanceSwitchPy,
};
pub use state_file::{State, TooLarge, MAX_DELAY};

use state_file::{Look, Signature};

/// The shortest time between two polls, whatever `poll_interval` says.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How late a poll may be before a request concludes this process has no poller.
const POLLER_GRACE: Duration = Duration::from_millis(250);

/// Which part of the configuration put the process in maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Env,
    File,
    /// A Redis store.
    Redis,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Env => "env",
            Self::File => "file",
            Self::Redis => "redis",
        }
    }
}

/// A consistent snapshot of the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub active: bool,
    pub message: Option<String>,
    /// Estimated end of maintenance, Unix seconds.
    pub until: Option<i64>,
    /// What `Retry-After` should say, in seconds from now.
    pub retry_after_secs: u64,
    pub source: Option<Source>,
    pub draining: bool,
}

/// Time as the switch sees it; tests substitute a manual one.
pub trait Clock: Send + Sync {
    /// Monotonic time since an arbitrary origin.
    fn monotonic(&self) -> Duration;
    /// Wall-clock Unix seconds.
    fn now_unix(&self) -> i64;
}

/// The real clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn now_unix(&self) -> i64 {
        crate::clock::now_unix()
    }
}

/// The process-wide drain flag behind [`drain_process`].
static PROCESS_DRAIN: AtomicBool = AtomicBool::new(false);

/// Makes every switch of this process report draining (readiness 503) until
/// [`undrain_process`]. Requests are still served: only readiness changes.
pub fn drain_process() {
    PROCESS_DRAIN.store(true, Ordering::Release);
    crate::metrics::set_draining(true);
}

/// Ends a [`drain_process`] drain. A drain through a switch or its state file stands.
pub fn undrain_process() {
    PROCESS_DRAIN.store(false, Ordering::Release);
}

/// Whether this process drains as a whole.
pub fn process_draining() -> bool {
    PROCESS_DRAIN.load(Ordering::Acquire)
}

type EnvLookup = dyn Fn(&str) -> Option<OsString> + Send + Sync;
type Warn = dyn Fn(&str) + Send + Sync;

/// The outside world: clocks, the environment, and where warnings go.
#[derive(Clone)]
pub struct Hooks {
    pub clock: Arc<dyn Clock>,
    pub env: Arc<EnvLookup>,
    pub warn: Arc<Warn>,
    /// The process-wide drain flag; tests give each switch its own.
    pub process_drain: &'static AtomicBool,
    /// Whether a background thread polls; tests poll by hand with [`Maintenance::poll_now`].
    pub background: bool,
}

impl Hooks {
    /// Real clocks, the process environment, and the Python `tidegate` logger.
    pub fn system() -> Self {
        Self {
            clock: Arc::new(SystemClock::new()),
            env: Arc::new(|name: &str| std::env::var_os(name)),
            warn: Arc::new(py::log_warning),
            process_drain: &PROCESS_DRAIN,
            background: true,
        }
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hooks { .. }")
    }
}

/// Where the state every process shares lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// A state file: an absolute path, so a later `chdir` does not move it.
    File(PathBuf),
    /// A key in Redis.
    Redis(store::Uri),
}

impl Store {
    fn source(&self) -> Source {
        match self {
            Self::File(_) => Source::File,
            Self::Redis(_) => Source::Redis,
        }
    }
}

/// How a switch is set up; validated by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub store: Option<Store>,
    /// Whether this process follows the store: polls it in the background and records a
    /// heartbeat there. Off for a one-off reader or writer such as the CLI.
    pub follow: bool,
    pub env_var: Option<String>,
    pub poll_interval: Duration,
    pub default_retry_after: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            store: None,
            follow: true,
            env_var: Some("MAINTENANCE_MODE".to_owned()),
            poll_interval: Duration::from_secs(1),
            default_retry_after: 60,
        }
    }
}

/// What `enable` sets besides `active`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice {
    pub message: Option<String>,
    pub until: Option<i64>,
    pub retry_after: Option<u64>,
}

const LOCAL_ACTIVE: u8 = 1;
const ENV_ACTIVE: u8 = 1 << 1;
const SHARED_ACTIVE: u8 = 1 << 2;
const LOCAL_DRAINING: u8 = 1 << 3;
const SHARED_DRAINING: u8 = 1 << 4;
const ANY_ACTIVE: u8 = LOCAL_ACTIVE | ENV_ACTIVE | SHARED_ACTIVE;
const ANY_DRAINING: u8 = LOCAL_DRAINING | SHARED_DRAINING;

/// Is this environment value one of the truthy spellings?
pub fn is_truthy(value: &std::ffi::OsStr) -> bool {
    value.to_str().is_some_and(|text| {
        let text = text.trim();
        ["1", "true", "yes", "on"]
            .iter()
            .any(|word| text.eq_ignore_ascii_case(word))
    })
}

/// `Retry-After` in seconds: time left until `until` when that is still ahead, otherwise the
/// explicit value, otherwise the default. Never negative, saturated at `MAX_DELAY`.
pub fn retry_after_secs(now: i64, until: Option<i64>, explicit: Option<u64>, default: u64) -> u64 {
    let secs = match until {
        Some(until) if until > now => u64::try_from(until.saturating_sub(now)).unwrap_or(MAX_DELAY),
        _ => explicit.unwrap_or(default),
    };
    secs.min(MAX_DELAY)
}

/// Why a change could not be made.
#[derive(Debug)]
pub enum ChangeError {
    /// The state would make a file no reader accepts (the message is too long).
    TooLarge(TooLarge),
    /// Writing the state file failed.
    Io(io::Error),
    /// The Redis store could not be written.
    Store(StoreError),
}

impl From<io::Error> for ChangeError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<TooLarge> for ChangeError {
    fn from(err: TooLarge) -> Self {
        Self::TooLarge(err)
    }
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(err) => err.fmt(f),
            Self::Io(err) => err.fmt(f),
            Self::Store(err) => err.fmt(f),
        }
    }
}

#[derive(Debug, Default)]
struct Sides {
    local: State,
    /// What the store (file or Redis) says.
    shared: State,
    /// Signature of the file version last read, good or bad.
    seen: Option<Signature>,
    /// A warning went out for the current bad episode.
    warned: bool,
    /// Whether the Redis store could be reached at the last poll (a warning said when not).
    reach: Reach,
    /// Bumped by every write of this process, so a poll that read the file before the write
    /// does not put the old state back.
    writes: u64,
}

/// How the switch tells its poller thread to stop. The thread sleeps with `park_timeout` and
/// takes no lock of this, so a process forked while it sleeps inherits nothing held.
#[derive(Debug, Default)]
struct Wake {
    stopped: AtomicBool,
    thread: Mutex<Option<std::thread::Thread>>,
}

/// The maintenance switch: cheap to ask, shared by every request of a process.
pub struct Maintenance {
    config: Config,
    hooks: Hooks,
    /// This switch, for the poller thread it starts.
    me: Weak<Maintenance>,
    /// The effective state, one bit per source.
    flags: AtomicU8,
    /// Monotonic nanoseconds after which a request takes the poller for missing.
    watchdog_ns: AtomicU64,
    /// The process whose thread polls for this switch (0: none yet).
    poller_pid: AtomicU32,
    wake: Arc<Wake>,
    /// Serialises this process's writes to the state file.
    writing: Mutex<()>,
    /// Details behind the flags, and what the poller remembers; held only for memory work.
    sides: Mutex<Sides>,
}

impl fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maintenance")
            .field("config", &self.config)
            .field("flags", &self.flags.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.wake.stopped.store(true, Ordering::Release);
        if let Some(thread) = self.wake.thread.lock().take() {
            thread.unpark();
        }
    }
}

impl Maintenance {
    /// A switch on the real clock, environment and logger.
    pub fn new(config: Config) -> Arc<Self> {
        Self::with_hooks(config, Hooks::system())
    }

    /// A switch that looks at the environment and the file once before it returns (on the
    /// caller's thread), then leaves that to its poller thread when `hooks.background` is set.
    pub fn with_hooks(config: Config, hooks: Hooks) -> Arc<Self> {
        let polls = config.follow && (config.env_var.is_some() || config.store.is_some());
        let switch = Arc::new_cyclic(|me| Self {
            config,
            hooks,
            me: me.clone(),
            flags: AtomicU8::new(0),
            watchdog_ns: AtomicU64::new(u64::MAX),
            poller_pid: AtomicU32::new(0),
            wake: Arc::default(),
            writing: Mutex::new(()),
            sides: Mutex::new(Sides::default()),
        });
        switch.poll_now();
        if switch.hooks.background && polls {
            switch.start_poller(false);
        }
        switch
    }
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Is the process in maintenance? The per-request check: an atomic load, and on every
    /// 32nd call of a thread the look for a missing poller (a clock read).
    pub fn active(&self) -> bool {
        thread_local! {
            static READS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
        }
        if READS.with(|reads| {
            let next = reads.get().wrapping_add(1);
            reads.set(next);
            next % 32 == 0
        }) {
            self.watch();
        }
        self.flags.load(Ordering::Acquire) & ANY_ACTIVE != 0
    }

    /// Is the process draining (readiness should fail)?
    pub fn draining(&self) -> bool {
        self.watch();
        self.flags.load(Ordering::Acquire) & ANY_DRAINING != 0
            || self.hooks.process_drain.load(Ordering::Acquire)
    }

    pub fn status(&self) -> Status {
        self.watch();
        let env_active = self.flags.load(Ordering::Acquire) & ENV_ACTIVE != 0;
        let sides = self.sides.lock();
        let (source, side) = if sides.local.active {
            (Some(Source::Local), Some(&sides.local))
        } else if sides.shared.active {
            (
                self.config.store.as_ref().map(Store::source),
                Some(&sides.shared),
            )
        } else if env_active {
            (Some(Source::Env), None)
        } else {
            (None, None)
        };
        let until = side.and_then(|s| s.until);
        let explicit = side.and_then(|s| s.retry_after);
        Status {
            active: source.is_some(),
            message: side.and_then(|s| s.message.clone()),
            until,
            retry_after_secs: retry_after_secs(
                self.hooks.clock.now_unix(),
                until,
                explicit,
                self.config.default_retry_after,
            ),
            source,
            draining: sides.local.draining
                || sides.shared.draining
                || self.hooks.process_drain.load(Ordering::Acquire),
        }
    }

    /// Turns maintenance on: in the state file when there is one and `local` is not set, else
    /// in this process only.
    pub fn enable(&self, notice: Notice, local: bool) -> Result<(), ChangeError> {
        self.change(local, move |state| {
            state.active = true;
            state.message.clone_from(&notice.message);
            state.until = notice.until;
            state.retry_after = notice.retry_after.map(|secs| secs.min(MAX_DELAY));
        })
    }

    /// Turns maintenance off and forgets its message, end estimate and Retry-After, on the side
    /// `enable` with the same `local` would have used.
    pub fn disable(&self, local: bool) -> Result<(), ChangeError> {
        self.change(local, |state| {
            state.active = false;
            state.message = None;
            state.until = None;
            state.retry_after = None;
        })
    }

    /// This process's own maintenance (its `draining` included), to put back later.
    pub fn local_state(&self) -> State {
        self.sides.lock().local.clone()
    }

    /// Puts back the maintenance fields of a [`Maintenance::local_state`]; this process's
    /// own `draining` stays as it is now.
    pub fn restore_local(&self, saved: State) {
        self.update_sides(|sides| {
            sides.local = State {
                draining: sides.local.draining,
                ..saved
            }
        });
    }

    /// Starts draining: through the state file (every process), or only this process when
    /// `local` is set or there is no file.
    pub fn drain(&self, local: bool) -> Result<(), ChangeError> {
        self.change(local, |state| state.draining = true)
    }

    /// Stops draining, on the same side `drain` would have used.
    pub fn undrain(&self, local: bool) -> Result<(), ChangeError> {
        self.change(local, |state| state.draining = false)
    }

    /// Applies `edit` to one side. Whatever the side, the result must fit in a state file every
    /// reader accepts, so a message that works in one process works for the whole fleet.
    fn change(&self, local: bool, edit: impl Fn(&mut State)) -> Result<(), ChangeError> {
        let now = self.hooks.clock.now_unix();
        let Some(store) = self.config.store.as_ref().filter(|_| !local) else {
            let mut sides = self.sides.lock();
            let mut state = sides.local.clone();
            edit(&mut state);
            state_file::render_checked(&state, now)?;
            sides.local = state;
            self.publish(&sides);
            return Ok(());
        };
        let _writing = self.writing.lock();
        let state = match store {
            Store::File(path) => {
                let mut state = match state_file::look(path, None) {
                    Look::Read {
                        result: Ok(state), ..
                    } => state,
                    Look::Missing => State::default(),
                    // Unreadable: build on the last good state rather than on nothing.
                    Look::Read { result: Err(_), .. } | Look::Unchanged => {
                        self.sides.lock().shared.clone()
                    }
                };
                edit(&mut state);
                let bytes = state_file::render_checked(&state, now)?;
                state_file::write_atomic(path, &bytes)?;
                state
            }
            Store::Redis(uri) => {
                let last_good = self.sides.lock().shared.clone();
                let mut conn = Conn::open(uri).map_err(ChangeError::Store)?;
                conn.update(uri.maintenance_key(), |current| {
                    let mut state = match current.map(state_file::parse) {
                        None => State::default(),
                        Some(Ok(state)) => state,
                        Some(Err(_)) => last_good.clone(),
                    };
                    edit(&mut state);
                    let bytes = state_file::render_checked(&state, now)?;
                    Ok::<_, TooLarge>((bytes, state))
                })
                .map_err(ChangeError::Store)??
            }
        };
        let mut sides = self.sides.lock();
        sides.shared = state;
        // The next poll reads back what is there now, and a poll under way is discarded.
        sides.seen = None;
        sides.warned = false;
        sides.writes = sides.writes.wrapping_add(1);
        self.publish(&sides);
        Ok(())
    }

    fn update_sides(&self, edit: impl FnOnce(&mut Sides)) {
        let mut sides = self.sides.lock();
        edit(&mut sides);
        self.publish(&sides);
    }

    /// Sets the flags from `sides` (whose lock the caller holds).
    fn publish(&self, sides: &Sides) {
        let bits = [
            (sides.local.active, LOCAL_ACTIVE),
            (sides.shared.active, SHARED_ACTIVE),
            (sides.local.draining, LOCAL_DRAINING),
            (sides.shared.draining, SHARED_DRAINING),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, bit)| acc | bit);
        // One atomic step, so a reader never sees a half-applied change; the env bit is kept.
        let _ = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some((old & ENV_ACTIVE) | bits)
            });
        self.report();
    }

    /// Puts what the switch says into the `tidegate_maintenance_active` and `tidegate_draining`
    /// gauges (the last switch of the process to change wins).
    fn report(&self) {
        let flags = self.flags.load(Ordering::Acquire);
        crate::metrics::set_maintenance_active(flags & ANY_ACTIVE != 0);
        crate::metrics::set_draining(
            flags & ANY_DRAINING != 0 || self.hooks.process_drain.load(Ordering::Acquire),
        );
    }

    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.hooks.clock.monotonic().as_nanos()).unwrap_or(u64::MAX)
    }

    fn interval(&self) -> Duration {
        self.config.poll_interval.max(MIN_POLL_INTERVAL)
    }

    /// The request path's only extra work: notice a missing poller (after a fork) and start one.
    #[inline]
    fn watch(&self) {
        if self.monotonic_ns() >= self.watchdog_ns.load(Ordering::Relaxed) {
            self.revive();
        }
    }

    #[cold]
    fn revive(&self) {
        let polls =
            self.config.follow && (self.config.env_var.is_some() || self.config.store.is_some());
        if !self.hooks.background || !polls {
            return;
        }
        // At most one look per interval, even while a poller is stuck on a slow source.
        self.arm_watchdog();
        // What this process knows may be as old as the fork: the new thread looks at once.
        self.start_poller(true);
    }

    fn arm_watchdog(&self) {
        let allowed = self.interval().saturating_add(POLLER_GRACE);
        let allowed = u64::try_from(allowed.as_nanos()).unwrap_or(u64::MAX);
        self.watchdog_ns.store(
            self.monotonic_ns().saturating_add(allowed),
            Ordering::Relaxed,
        );
    }

    /// Starts this process's poller thread for the switch, unless one runs already.
    fn start_poller(&self, poll_first: bool) {
        let pid = std::process::id();
        let previous = self.poller_pid.load(Ordering::Acquire);
        if previous == pid
            || self
                .poller_pid
                .compare_exchange(previous, pid, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let me = self.me.clone();
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("tidegate-maintenance".to_owned())
            .spawn(move || run_poller(&me, &wake, poll_first));
        match spawned {
            Ok(handle) => *self.wake.thread.lock() = Some(handle.thread().clone()),
            Err(err) => {
                self.poller_pid.store(0, Ordering::Release);
                (self.hooks.warn)(&format!(
                    "cannot start the maintenance poller thread ({err}); trying again within the poll interval"
                ));
            }
        }
    }

    /// Re-reads the environment and the store now, on the caller's thread, over a connection
    /// made for this one look. Tests call this instead of a poller.
    pub fn poll_now(&self) {
        self.poll(&mut Link::default());
    }

    /// Re-reads the environment and the store, reusing `link`'s connection to Redis.
    fn poll(&self, link: &mut Link) {
        self.arm_watchdog();
        let env_active = self
            .config
            .env_var
            .as_deref()
            .and_then(|name| (self.hooks.env)(name))
            .is_some_and(|value| is_truthy(&value));
        let before = if env_active {
            self.flags.fetch_or(ENV_ACTIVE, Ordering::AcqRel)
        } else {
            self.flags.fetch_and(!ENV_ACTIVE, Ordering::AcqRel)
        };
        if (before & ENV_ACTIVE != 0) != env_active {
            self.report();
        }
        match &self.config.store {
            None => {}
            Some(Store::File(path)) => self.poll_file(path),
            Some(Store::Redis(uri)) => self.poll_redis(uri, link),
        }
    }

    fn poll_file(&self, path: &std::path::Path) {
        let (seen, writes) = {
            let sides = self.sides.lock();
            (sides.seen, sides.writes)
        };
        // The I/O, with no lock held: a writer never waits for a slow read.
        let look = state_file::look(path, seen);
        let (result, signature) = match look {
            Look::Unchanged => return,
            Look::Missing => (Ok(State::default()), None),
            Look::Read { result, signature } => (result, signature),
        };
        self.take_read(writes, signature, result, || {
            format!("maintenance state file {}", path.display())
        });
    }

    fn poll_redis(&self, uri: &store::Uri, link: &mut Link) {
        let writes = self.sides.lock().writes;
        let key = uri.maintenance_key();
        let read = link.with(uri, |conn| conn.get(key));
        let result = match read {
            Ok(bytes) => bytes.map_or_else(|| Ok(State::default()), |b| state_file::parse(&b)),
            Err(err) => {
                let first = self.sides.lock().reach.lost();
                if first {
                    (self.hooks.warn)(&format!(
                        "maintenance store {uri} is lost ({err}); keeping the last known state"
                    ));
                }
                return;
            }
        };
        if self.sides.lock().reach.back() {
            (self.hooks.warn)(&format!("maintenance store {uri} is back"));
        }
        self.take_read(writes, None, result, || {
            format!("maintenance store {uri}: the key {key}")
        });
        if self.config.follow {
            let heartbeat = self.heartbeat();
            let ttl = self.interval().saturating_mul(3).max(HEARTBEAT_MIN_TTL);
            let hb_key = format!("{key}:seen:{}:{}", store::host_name(), std::process::id());
            // A lost heartbeat is only a gap in the fleet view; the next poll says so if the
            // store is really gone.
            let _ = link.with(uri, |conn| conn.set_for(&hb_key, &heartbeat, ttl, false));
        }
    }

    /// Applies what a poll read, unless this process wrote meanwhile (what was read may
    /// predate the write); warns once per bad episode.
    fn take_read(
        &self,
        writes: u64,
        signature: Option<Signature>,
        result: Result<State, String>,
        what: impl FnOnce() -> String,
    ) {
        let warning = {
            let mut sides = self.sides.lock();
            if sides.writes != writes {
                return;
            }
            sides.seen = signature;
            match result {
                Ok(state) => {
                    sides.warned = false;
                    if sides.shared != state {
                        sides.shared = state;
                        self.publish(&sides);
                    }
                    None
                }
                Err(_) if sides.warned => None,
                Err(reason) => {
                    sides.warned = true;
                    Some(format!("{} {reason}; keeping the last good state", what()))
                }
            }
        };
        if let Some(message) = warning {
            (self.hooks.warn)(&message);
        }
    }

    /// The heartbeats in a Redis store: every process that followed it within the last few
    /// poll intervals, as JSON objects (`host`, `pid`, `active`, `source`, `draining`,
    /// `polled_at`, `poll_interval`), oldest host and pid first. `Ok(None)` without a Redis store.
    pub fn fleet(&self) -> Result<Option<Vec<serde_json::Value>>, StoreError> {
        let Some(Store::Redis(uri)) = &self.config.store else {
            return Ok(None);
        };
        let pattern = format!("{}:seen:*", escape_glob(uri.maintenance_key()));
        let mut conn = Conn::open(uri)?;
        let mut beats: Vec<serde_json::Value> = conn
            .scan_values(&pattern)?
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .filter(serde_json::Value::is_object)
            .collect();
        beats.sort_by_key(|beat| (beat["host"].to_string(), beat["pid"].as_u64()));
        Ok(Some(beats))
    }

    /// What this process records in the store on each poll: who it is and what it sees.
    fn heartbeat(&self) -> Vec<u8> {
        let status = self.status();
        serde_json::to_vec(&serde_json::json!({
            "host": store::host_name(),
            "pid": std::process::id(),
            "active": status.active,
            "source": status.source.map(Source::as_str),
            "draining": status.draining,
            "polled_at": crate::clock::now_unix_f64(),
            "poll_interval": self.interval().as_secs_f64(),
        }))
        .unwrap_or_default()
    }
}

/// `key` with the characters `SCAN MATCH` treats as a pattern escaped.
fn escape_glob(key: &str) -> String {
    key.chars()
        .flat_map(|c| {
            let escape = matches!(c, '*' | '?' | '[' | ']' | '\\');
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// The shortest time a heartbeat stays in the store.
const HEARTBEAT_MIN_TTL: Duration = Duration::from_secs(5);

/// The poller thread: polls once per interval (first at once, when `poll_first`), and at once
/// on a change notice from a Redis store, until its switch is dropped. It holds the switch
/// only while polling, so dropping the last handle elsewhere ends it within an interval.
fn run_poller(me: &Weak<Maintenance>, wake: &Wake, mut poll_first: bool) {
    let mut link = Link::default();
    let mut last_poll = Instant::now();
    loop {
        let (interval, uri) = {
            let Some(switch) = me.upgrade() else {
                return;
            };
            if poll_first {
                switch.poll(&mut link);
                last_poll = Instant::now();
            }
            let uri = match &switch.config.store {
                Some(Store::Redis(uri)) => Some(uri.clone()),
                _ => None,
            };
            (switch.interval(), uri)
        };
        poll_first = true;
        if wake.stopped.load(Ordering::Acquire) {
            return;
        }
        if link.wait(
            uri.as_ref().map(|uri| (uri, uri.maintenance_key())),
            interval,
        ) {
            // Notices come as fast as writers send them; polls stay at least this far apart.
            std::thread::sleep(MIN_POLL_INTERVAL.saturating_sub(last_poll.elapsed()));
        }
        if wake.stopped.load(Ordering::Acquire) {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
