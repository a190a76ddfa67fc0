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
//! The effective state lives in one atomic byte. `active()` reads the monotonic clock and that
//! byte, nothing else: a request never touches the environment or the file. A background
//! thread per switch (no GIL) re-reads the environment variable and stats the file once per
//! `poll_interval` (at least 10 ms apart), reading the file only when its (device, inode, size,
//! mtime, ctime) changed. A slow disk, a hung mount or a FIFO at the path can stall that thread
//! and nothing else; the last good state stands meanwhile.
//!
//! The thread is started with the switch. A process forked from one that had it (a Gunicorn
//! master that loaded the app before forking) has no such thread: the clock read on the request
//! path notices that no poll has happened for longer than the interval allows and starts one.
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

pub use py::{
    drain_process_py, prepare_module, process_draining_py, undrain_process_py, write_atomic_py,
    MaintenanceStatusPy, MaintenanceSwitchPy,
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
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Env => "env",
            Self::File => "file",
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

/// How a switch is set up; validated by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// An absolute path, so a later `chdir` does not move it.
    pub state_file: Option<PathBuf>,
    pub env_var: Option<String>,
    pub poll_interval: Duration,
    pub default_retry_after: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_file: None,
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
const FILE_ACTIVE: u8 = 1 << 2;
const LOCAL_DRAINING: u8 = 1 << 3;
const FILE_DRAINING: u8 = 1 << 4;
const ANY_ACTIVE: u8 = LOCAL_ACTIVE | ENV_ACTIVE | FILE_ACTIVE;
const ANY_DRAINING: u8 = LOCAL_DRAINING | FILE_DRAINING;

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
        }
    }
}

#[derive(Debug, Default)]
struct Sides {
    local: State,
    file: State,
    /// Signature of the file version last read, good or bad.
    seen: Option<Signature>,
    /// A warning went out for the current bad episode.
    warned: bool,
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
        let polls = config.env_var.is_some() || config.state_file.is_some();
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

    /// Is the process in maintenance? The per-request check: two atomic loads and a clock read.
    pub fn active(&self) -> bool {
        self.watch();
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
        } else if sides.file.active {
            (Some(Source::File), Some(&sides.file))
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
                || sides.file.draining
                || self.hooks.process_drain.load(Ordering::Acquire),
        }
    }

    /// Turns maintenance on: in the state file when there is one and `local` is not set, else
    /// in this process only.
    pub fn enable(&self, notice: Notice, local: bool) -> Result<(), ChangeError> {
        self.change(local, move |state| {
            state.active = true;
            state.message = notice.message;
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
    fn change(&self, local: bool, edit: impl FnOnce(&mut State)) -> Result<(), ChangeError> {
        let now = self.hooks.clock.now_unix();
        let Some(path) = self.config.state_file.as_deref().filter(|_| !local) else {
            let mut sides = self.sides.lock();
            let mut state = sides.local.clone();
            edit(&mut state);
            state_file::render_checked(&state, now)?;
            sides.local = state;
            self.publish(&sides);
            return Ok(());
        };
        let _writing = self.writing.lock();
        let mut state = match state_file::look(path, None) {
            Look::Read {
                result: Ok(state), ..
            } => state,
            Look::Missing => State::default(),
            // Unreadable: build on the last good state rather than on nothing.
            Look::Read { result: Err(_), .. } | Look::Unchanged => self.sides.lock().file.clone(),
        };
        edit(&mut state);
        let bytes = state_file::render_checked(&state, now)?;
        state_file::write_atomic(path, &bytes)?;
        let mut sides = self.sides.lock();
        sides.file = state;
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
            (sides.file.active, FILE_ACTIVE),
            (sides.local.draining, LOCAL_DRAINING),
            (sides.file.draining, FILE_DRAINING),
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
        if !self.hooks.background {
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

    /// Re-reads the environment and the state file now, on the caller's thread. The poller
    /// thread calls this once per interval; tests call it instead of a poller.
    pub fn poll_now(&self) {
        self.arm_watchdog();
        let env_active = self
            .config
            .env_var
            .as_deref()
            .and_then(|name| (self.hooks.env)(name))
            .is_some_and(|value| is_truthy(&value));
        if env_active {
            self.flags.fetch_or(ENV_ACTIVE, Ordering::AcqRel);
        } else {
            self.flags.fetch_and(!ENV_ACTIVE, Ordering::AcqRel);
        }

        let Some(path) = self.config.state_file.as_deref() else {
            return;
        };
        let (seen, writes) = {
            let sides = self.sides.lock();
            (sides.seen, sides.writes)
        };
        // The I/O, with no lock held: a writer never waits for a slow read.
        let look = state_file::look(path, seen);
        let warning = {
            let mut sides = self.sides.lock();
            if sides.writes != writes {
                // This process wrote meanwhile; what was read may predate it.
                return;
            }
            let (result, signature) = match look {
                Look::Unchanged => return,
                Look::Missing => (Ok(State::default()), None),
                Look::Read { result, signature } => (result, signature),
            };
            sides.seen = signature;
            match result {
                Ok(state) => {
                    sides.warned = false;
                    if sides.file != state {
                        sides.file = state;
                        self.publish(&sides);
                    }
                    None
                }
                Err(_) if sides.warned => None,
                Err(reason) => {
                    sides.warned = true;
                    Some(format!(
                        "maintenance state file {} {reason}; keeping the last good state",
                        path.display()
                    ))
                }
            }
        };
        if let Some(message) = warning {
            (self.hooks.warn)(&message);
        }
    }
}

/// The poller thread: polls once per interval (first at once, when `poll_first`) until its
/// switch is dropped. It holds the switch only while polling, so dropping the last handle
/// elsewhere ends it at once.
fn run_poller(me: &Weak<Maintenance>, wake: &Wake, mut poll_first: bool) {
    loop {
        let interval = {
            let Some(switch) = me.upgrade() else {
                return;
            };
            if poll_first {
                switch.poll_now();
            }
            switch.interval()
        };
        poll_first = true;
        if wake.stopped.load(Ordering::Acquire) {
            return;
        }
        // An early wake-up only means an early poll.
        std::thread::park_timeout(interval);
        if wake.stopped.load(Ordering::Acquire) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::state_file::tests::TempDir;
    use super::*;
    use std::collections::HashMap;
    use std::fs;
    use std::sync::atomic::AtomicI64;
    use std::thread;

    #[derive(Default)]
    struct ManualClock {
        mono_ns: AtomicU64,
        unix: AtomicI64,
    }

    impl ManualClock {
        fn advance(&self, by: Duration) {
            self.mono_ns
                .fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn monotonic(&self) -> Duration {
            Duration::from_nanos(self.mono_ns.load(Ordering::SeqCst))
        }

        fn now_unix(&self) -> i64 {
            self.unix.load(Ordering::SeqCst)
        }
    }

    struct Rig {
        clock: Arc<ManualClock>,
        env: Arc<Mutex<HashMap<String, OsString>>>,
        warnings: Arc<Mutex<Vec<String>>>,
        process_drain: &'static AtomicBool,
    }

    impl Rig {
        fn new() -> Self {
            let clock = Arc::new(ManualClock::default());
            clock.unix.store(1_000_000, Ordering::SeqCst);
            Self {
                clock,
                env: Arc::default(),
                warnings: Arc::default(),
                process_drain: Box::leak(Box::new(AtomicBool::new(false))),
            }
        }

        fn hooks(&self) -> Hooks {
            let env = self.env.clone();
            let warnings = self.warnings.clone();
            Hooks {
                clock: self.clock.clone(),
                env: Arc::new(move |name: &str| env.lock().get(name).cloned()),
                warn: Arc::new(move |msg: &str| warnings.lock().push(msg.to_owned())),
                process_drain: self.process_drain,
                background: false,
            }
        }

        fn switch(&self, state_file: Option<PathBuf>, poll: Duration) -> Arc<Maintenance> {
            let config = Config {
                state_file,
                poll_interval: poll,
                ..Config::default()
            };
            Maintenance::with_hooks(config, self.hooks())
        }

        fn set_env(&self, value: &str) {
            self.env
                .lock()
                .insert("MAINTENANCE_MODE".to_owned(), value.into());
        }

        fn warnings(&self) -> usize {
            self.warnings.lock().len()
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn truthy_spellings() {
        for yes in ["1", "true", "TRUE", " yes ", "On", "\ttrue\n"] {
            assert!(is_truthy(yes.as_ref()), "{yes:?}");
        }
        for no in ["", "0", "false", "no", "off", "2", "truthy", "y", "enabled"] {
            assert!(!is_truthy(no.as_ref()), "{no:?}");
        }
    }

    #[test]
    fn retry_after_follows_until_and_never_goes_back_in_time() {
        assert_eq!(retry_after_secs(100, Some(160), Some(5), 60), 60);
        assert_eq!(retry_after_secs(100, Some(101), None, 60), 1);
        assert_eq!(retry_after_secs(100, Some(100), Some(5), 60), 5);
        assert_eq!(retry_after_secs(100, Some(40), None, 60), 60);
        assert_eq!(retry_after_secs(100, None, Some(7), 60), 7);
        assert_eq!(retry_after_secs(100, None, None, 60), 60);
        assert_eq!(retry_after_secs(0, Some(i64::MAX), None, 0), MAX_DELAY);
        assert_eq!(retry_after_secs(0, None, None, u64::MAX), MAX_DELAY);
    }

    #[test]
    fn in_process_enable_and_disable() {
        let rig = Rig::new();
        let switch = rig.switch(None, SECOND);
        assert!(!switch.active());
        assert_eq!(switch.status().source, None);
        switch
            .enable(
                Notice {
                    message: Some("upgrading".into()),
                    until: Some(1_000_300),
                    retry_after: Some(10),
                },
                false,
            )
            .expect("no file to write");
        assert!(switch.active());
        let status = switch.status();
        assert_eq!(status.source, Some(Source::Local));
        assert_eq!(status.message.as_deref(), Some("upgrading"));
        assert_eq!(status.retry_after_secs, 300);
        rig.clock.unix.store(1_000_400, Ordering::SeqCst);
        assert_eq!(switch.status().retry_after_secs, 10);
        switch.disable(false).expect("no file");
        assert!(!switch.active());
        assert_eq!(
            switch.status(),
            Status {
                active: false,
                message: None,
                until: None,
                retry_after_secs: 60,
                source: None,
                draining: false
            }
        );
    }

    #[test]
    fn env_changes_are_seen_at_the_next_poll_and_not_before() {
        let rig = Rig::new();
        let switch = rig.switch(None, SECOND);
        rig.set_env("true");
        assert!(!switch.active(), "a read polled");
        switch.poll_now();
        assert!(switch.active());
        assert_eq!(switch.status().source, Some(Source::Env));
        rig.set_env("off");
        assert!(switch.active());
        switch.poll_now();
        assert!(!switch.active());
    }

    #[test]
    fn no_env_var_ignores_the_environment() {
        let rig = Rig::new();
        rig.set_env("1");
        let config = Config {
            env_var: None,
            ..Config::default()
        };
        let blind = Maintenance::with_hooks(config, rig.hooks());
        blind.poll_now();
        assert!(!blind.active());
    }

    #[test]
    fn a_second_switch_follows_the_file_within_the_interval() {
        let rig = Rig::new();
        let dir = TempDir::new("follow");
        let path = dir.0.join("state.json");
        let writer = rig.switch(Some(path.clone()), SECOND);
        let reader = rig.switch(Some(path.clone()), SECOND);
        writer
            .enable(
                Notice {
                    message: Some("back soon".into()),
                    ..Notice::default()
                },
                false,
            )
            .expect("write");
        assert!(writer.active(), "the writer sees its own write at once");
        assert!(!reader.active(), "the reader waits for its poll");
        reader.poll_now();
        let status = reader.status();
        assert_eq!(
            (status.active, status.source, status.message.as_deref()),
            (true, Some(Source::File), Some("back soon"))
        );
        writer.drain(false).expect("write");
        writer.disable(false).expect("write");
        reader.poll_now();
        assert!(!reader.active());
        assert!(reader.draining(), "disable kept the drain");
        writer.undrain(false).expect("write");
        reader.poll_now();
        assert!(!reader.draining());
        assert_eq!(dir.entries(), vec!["state.json".to_owned()]);
    }

    #[test]
    fn local_drain_stays_in_the_process() {
        let rig = Rig::new();
        let dir = TempDir::new("local");
        let path = dir.0.join("state.json");
        let switch = rig.switch(Some(path.clone()), SECOND);
        switch.drain(true).expect("local");
        assert!(switch.draining());
        assert!(!path.exists());
        switch.enable(Notice::default(), false).expect("write");
        let state = state_file::parse(&fs::read(&path).expect("read")).expect("valid");
        assert!(!state.draining);
        assert!(switch.status().draining);
        switch.undrain(true).expect("local");
        assert!(!switch.draining());
    }

    #[test]
    fn local_maintenance_leaves_the_file_alone_and_restores_exactly() {
        let rig = Rig::new();
        let dir = TempDir::new("local-maintenance");
        let path = dir.0.join("state.json");
        let switch = rig.switch(Some(path.clone()), SECOND);
        let other = rig.switch(Some(path.clone()), SECOND);
        let before = switch.local_state();
        switch
            .enable(
                Notice {
                    message: Some("in a test".into()),
                    until: Some(1_000_300),
                    retry_after: Some(7),
                },
                true,
            )
            .expect("local");
        assert!(!path.exists(), "local maintenance never writes the file");
        let status = switch.status();
        assert_eq!(
            (status.active, status.source, status.message.as_deref()),
            (true, Some(Source::Local), Some("in a test"))
        );
        other.poll_now();
        assert!(!other.active(), "another process sees nothing");

        let saved = switch.local_state();
        switch.enable(Notice::default(), true).expect("local");
        switch.drain(true).expect("local");
        switch.restore_local(saved.clone());
        assert_eq!(
            switch.local_state(),
            State {
                draining: true,
                ..saved
            },
            "the maintenance fields come back, the drain stays"
        );
        rig.clock.unix.store(1_000_400, Ordering::SeqCst);
        assert_eq!(
            switch.status().retry_after_secs,
            7,
            "the explicit value came back too"
        );

        switch.restore_local(before);
        assert!(!switch.active());
        assert!(switch.draining());
        switch.disable(true).expect("local");
        assert!(!path.exists());
    }

    #[test]
    fn a_process_drain_reaches_every_switch_and_only_draining() {
        let rig = Rig::new();
        let dir = TempDir::new("process");
        let path = dir.0.join("state.json");
        let plain = rig.switch(None, SECOND);
        let shared = rig.switch(Some(path.clone()), SECOND);
        rig.process_drain.store(true, Ordering::SeqCst);
        for switch in [&plain, &shared] {
            assert!(switch.draining());
            let status = switch.status();
            assert!(status.draining);
            assert!(!status.active, "a drain is not maintenance");
            assert!(!switch.active());
        }
        assert!(
            !path.exists(),
            "a process drain never writes the shared file"
        );
        plain.undrain(true).expect("local");
        shared.undrain(false).expect("write");
        assert!(
            plain.draining() && shared.draining(),
            "only the process flag ends it"
        );
        rig.process_drain.store(false, Ordering::SeqCst);
        assert!(!plain.draining() && !shared.draining());
        assert!(!plain.status().draining);
        let other = Rig::new().switch(None, SECOND);
        rig.process_drain.store(true, Ordering::SeqCst);
        assert!(!other.draining(), "another flag, another process");
    }

    #[test]
    fn the_process_flag_round_trips() {
        // The only test that touches the real static.
        drain_process();
        assert!(process_draining());
        drain_process();
        assert!(process_draining(), "draining twice is still draining");
        undrain_process();
        assert!(!process_draining());
    }

    #[test]
    fn a_bad_file_keeps_the_last_good_state_and_warns_once_per_episode() {
        let rig = Rig::new();
        let dir = TempDir::new("bad");
        let path = dir.0.join("state.json");
        let writer = rig.switch(Some(path.clone()), SECOND);
        writer.enable(Notice::default(), false).expect("write");
        let reader = rig.switch(Some(path.clone()), SECOND);
        assert!(reader.active());
        for garbage in ["", "{\"active\": tr", "[1, 2]", "{\"active\": 1}"] {
            fs::write(&path, garbage).expect("write");
            reader.poll_now();
            assert!(reader.active(), "{garbage:?} lost the last good state");
            assert!(reader.status().active);
        }
        assert_eq!(rig.warnings(), 1, "{:?}", rig.warnings.lock());
        assert!(rig.warnings.lock()[0].contains("is empty"));

        fs::write(&path, "{\"active\": false}").expect("write");
        reader.poll_now();
        assert!(!reader.active());
        fs::write(&path, "nope").expect("write");
        reader.poll_now();
        assert!(!reader.active());
        assert_eq!(rig.warnings(), 2, "a good read re-arms the warning");

        fs::remove_file(&path).expect("rm");
        fs::create_dir(&path).expect("mkdir");
        reader.poll_now();
        assert!(!reader.active());
        assert_eq!(rig.warnings(), 2, "still the same bad episode");
    }

    #[test]
    fn writing_over_a_bad_file_builds_on_the_last_good_state() {
        let rig = Rig::new();
        let dir = TempDir::new("rmw");
        let path = dir.0.join("state.json");
        let switch = rig.switch(Some(path.clone()), SECOND);
        switch.drain(false).expect("write");
        fs::write(&path, "garbage").expect("write");
        switch.enable(Notice::default(), false).expect("write");
        let state = state_file::parse(&fs::read(&path).expect("read")).expect("valid");
        assert!(state.active && state.draining);
    }

    #[test]
    fn pollers_never_block_each_other() {
        let rig = Rig::new();
        let dir = TempDir::new("threads");
        let path = dir.0.join("state.json");
        let switch = rig.switch(Some(path.clone()), SECOND);
        let writer = rig.switch(Some(path), SECOND);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..32)
            .map(|_| {
                let switch = switch.clone();
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut seen = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let status = switch.status();
                        assert_eq!(status.active, status.source.is_some());
                        if status.active {
                            assert_eq!(status.message.as_deref(), Some("m"));
                        }
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        let poller = {
            let switch = switch.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    switch.poll_now();
                }
            })
        };
        for i in 0..200 {
            if i % 2 == 0 {
                writer
                    .enable(
                        Notice {
                            message: Some("m".into()),
                            ..Notice::default()
                        },
                        false,
                    )
                    .expect("write");
            } else {
                writer.disable(false).expect("write");
            }
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().expect("reader panicked") > 0);
        }
        poller.join().expect("poller panicked");
        switch.poll_now();
        assert!(!switch.active());
        assert_eq!(rig.warnings(), 0);
    }

    /// Waits up to two seconds for `condition`, checking every few milliseconds.
    fn eventually(condition: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            thread::sleep(Duration::from_millis(2));
        }
        condition()
    }

    #[test]
    fn the_background_poller_follows_the_file_and_the_environment() {
        let rig = Rig::new();
        let dir = TempDir::new("background");
        let path = dir.0.join("state.json");
        let writer = rig.switch(Some(path.clone()), SECOND);
        let hooks = Hooks {
            clock: Arc::new(SystemClock::new()),
            background: true,
            ..rig.hooks()
        };
        let config = Config {
            state_file: Some(path),
            poll_interval: Duration::from_millis(20),
            ..Config::default()
        };
        let reader = Maintenance::with_hooks(config, hooks);
        writer.enable(Notice::default(), false).expect("write");
        assert!(
            eventually(|| reader.active()),
            "the file change never arrived"
        );
        writer.disable(false).expect("write");
        rig.set_env("yes");
        assert!(eventually(|| reader.status().source == Some(Source::Env)));
        rig.set_env("no");
        assert!(eventually(|| !reader.active()));
    }

    #[test]
    fn a_stuck_source_stalls_the_poller_and_no_reader() {
        let rig = Rig::new();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let release = Arc::new((Mutex::new(false), parking_lot::Condvar::new()));
        let stuck = Arc::new(AtomicBool::new(false));
        let hooks = Hooks {
            clock: Arc::new(SystemClock::new()),
            background: true,
            env: {
                let release = release.clone();
                let stuck = stuck.clone();
                Arc::new(move |_: &str| {
                    if stuck.load(Ordering::SeqCst) {
                        let _ = entered_tx.lock().send(());
                        let (lock, signal) = &*release;
                        let mut released = lock.lock();
                        while !*released {
                            signal.wait(&mut released);
                        }
                    }
                    Some("1".into())
                })
            },
            ..rig.hooks()
        };
        let config = Config {
            poll_interval: Duration::from_millis(10),
            ..Config::default()
        };
        let switch = Maintenance::with_hooks(config, hooks);
        assert!(switch.active());
        stuck.store(true, Ordering::SeqCst);
        entered_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the poller never polled");
        // The poller is now blocked inside the source. Readers answer from the snapshot.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let reader = {
            let switch = switch.clone();
            thread::spawn(move || {
                for _ in 0..10_000 {
                    assert!(switch.active());
                    assert!(switch.status().active);
                    assert!(!switch.draining());
                }
                let _ = done_tx.send(());
            })
        };
        let answered = done_rx.recv_timeout(Duration::from_secs(10));
        let (lock, signal) = &*release;
        *lock.lock() = true;
        signal.notify_all();
        answered.expect("a reader waited for the stuck source");
        reader.join().expect("reader panicked");
    }

    #[test]
    fn a_process_without_its_poller_starts_one_on_the_next_read() {
        // What a forked child sees: the switch's poller thread belongs to another process.
        let rig = Rig::new();
        let hooks = Hooks {
            background: true,
            ..rig.hooks()
        };
        let config = Config {
            poll_interval: Duration::from_secs(3600),
            ..Config::default()
        };
        let switch = Maintenance::with_hooks(config, hooks);
        rig.set_env("1");
        rig.clock.advance(Duration::from_secs(3601));
        assert!(!switch.active(), "a read polled");
        thread::sleep(Duration::from_millis(50));
        assert!(
            !switch.active(),
            "the running poller sleeps for an hour; nobody else may poll"
        );
        switch.poller_pid.store(u32::MAX, Ordering::SeqCst);
        rig.clock.advance(Duration::from_secs(3601));
        assert!(
            eventually(|| switch.active()),
            "no poller was started for this process"
        );
        assert_eq!(switch.poller_pid.load(Ordering::SeqCst), std::process::id());
    }

    #[test]
    fn a_message_no_reader_would_accept_is_refused_on_either_side() {
        let rig = Rig::new();
        let dir = TempDir::new("too-large");
        let path = dir.0.join("state.json");
        let switch = rig.switch(Some(path.clone()), SECOND);
        switch
            .enable(
                Notice {
                    message: Some("before".into()),
                    ..Notice::default()
                },
                false,
            )
            .expect("write");
        let before = fs::read(&path).expect("read");
        // Control characters take six bytes each in JSON: 11,000 of them are 66,000 bytes.
        let huge = Notice {
            message: Some("\u{1}".repeat(11_000)),
            ..Notice::default()
        };
        for local in [false, true] {
            match switch.enable(huge.clone(), local) {
                Err(ChangeError::TooLarge(TooLarge { bytes })) => {
                    assert!(bytes as u64 > state_file::MAX_FILE_BYTES);
                }
                other => panic!("local={local}: {other:?}"),
            }
        }
        assert_eq!(
            fs::read(&path).expect("read"),
            before,
            "the file was touched"
        );
        assert_eq!(switch.status().message.as_deref(), Some("before"));
        let fits = "x".repeat(60_000);
        switch
            .enable(
                Notice {
                    message: Some(fits.clone()),
                    ..Notice::default()
                },
                false,
            )
            .expect("a message that fits");
        let reader = rig.switch(Some(path), SECOND);
        assert_eq!(
            reader.status().message,
            Some(fits),
            "every reader accepts it"
        );
        assert_eq!(rig.warnings(), 0);
    }
}
