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
//! byte; at most once per `poll_interval` one caller (whoever takes the poll lock with
//! `try_lock`; nobody waits for it) re-reads the environment variable and stats the file,
//! reading the file only when its (device, inode, size, mtime, ctime) changed.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use py::{
    drain_process_py, process_draining_py, undrain_process_py, MaintenanceStatusPy,
    MaintenanceSwitchPy,
};
pub use state_file::{State, MAX_DELAY};

use state_file::{Look, Signature};

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
}

impl Hooks {
    /// Real clocks, the process environment, and the Python `tidegate` logger.
    pub fn system() -> Self {
        Self {
            clock: Arc::new(SystemClock::new()),
            env: Arc::new(|name: &str| std::env::var_os(name)),
            warn: Arc::new(py::log_warning),
            process_drain: &PROCESS_DRAIN,
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

#[derive(Debug, Default)]
struct Sides {
    local: State,
    file: State,
}

#[derive(Debug, Default)]
struct Poller {
    /// Signature of the file version last read, good or bad.
    seen: Option<Signature>,
    /// A warning went out for the current bad episode.
    warned: bool,
}

/// The maintenance switch: cheap to ask, shared by every request of a process.
pub struct Maintenance {
    config: Config,
    hooks: Hooks,
    /// The effective state, one bit per source.
    flags: AtomicU8,
    /// Monotonic nanoseconds before which nobody polls.
    next_poll_ns: AtomicU64,
    /// Taken (try-lock) by the one caller that polls; taken (blocking) by writers.
    poller: Mutex<Poller>,
    /// Details behind the flags; updated together with them.
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

impl Maintenance {
    /// A switch on the real clock, environment and logger.
    pub fn new(config: Config) -> Self {
        Self::with_hooks(config, Hooks::system())
    }

    /// A switch that looks at the environment and the file once before it returns.
    pub fn with_hooks(config: Config, hooks: Hooks) -> Self {
        let switch = Self {
            config,
            hooks,
            flags: AtomicU8::new(0),
            next_poll_ns: AtomicU64::new(0),
            poller: Mutex::new(Poller::default()),
            sides: Mutex::new(Sides::default()),
        };
        let warning = {
            let mut poller = switch.poller.lock();
            switch.poll(switch.monotonic_ns(), &mut poller)
        };
        switch.emit(warning);
        switch
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Is the process in maintenance? The per-request check.
    pub fn active(&self) -> bool {
        self.refresh();
        self.flags.load(Ordering::Acquire) & ANY_ACTIVE != 0
    }

    /// Is the process draining (readiness should fail)?
    pub fn draining(&self) -> bool {
        self.refresh();
        self.flags.load(Ordering::Acquire) & ANY_DRAINING != 0
            || self.hooks.process_drain.load(Ordering::Acquire)
    }

    pub fn status(&self) -> Status {
        self.refresh();
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
    pub fn enable(&self, notice: Notice, local: bool) -> io::Result<()> {
        self.change(local, move |state| {
            state.active = true;
            state.message = notice.message;
            state.until = notice.until;
            state.retry_after = notice.retry_after.map(|secs| secs.min(MAX_DELAY));
        })
    }

    /// Turns maintenance off and forgets its message, end estimate and Retry-After, on the side
    /// `enable` with the same `local` would have used.
    pub fn disable(&self, local: bool) -> io::Result<()> {
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
    pub fn drain(&self, local: bool) -> io::Result<()> {
        self.change(local, |state| state.draining = true)
    }

    /// Stops draining, on the same side `drain` would have used.
    pub fn undrain(&self, local: bool) -> io::Result<()> {
        self.change(local, |state| state.draining = false)
    }

    fn change(&self, local: bool, edit: impl FnOnce(&mut State)) -> io::Result<()> {
        let Some(path) = self.config.state_file.as_deref().filter(|_| !local) else {
            self.update_sides(|sides| edit(&mut sides.local));
            return Ok(());
        };
        // Holding the poll lock keeps a poll that read the old file from landing after us.
        let mut poller = self.poller.lock();
        let mut state = match state_file::look(path, None) {
            Look::Read {
                result: Ok(state), ..
            } => state,
            Look::Missing => State::default(),
            // Unreadable: build on the last good state rather than on nothing.
            Look::Read { result: Err(_), .. } | Look::Unchanged => self.sides.lock().file.clone(),
        };
        edit(&mut state);
        let bytes = state_file::render(&state, self.hooks.clock.now_unix());
        state_file::write_atomic(path, &bytes)?;
        // Forget the signature so the next poll reads back what is there now.
        poller.seen = None;
        poller.warned = false;
        self.update_sides(|sides| sides.file = state);
        Ok(())
    }

    fn update_sides(&self, edit: impl FnOnce(&mut Sides)) {
        let mut sides = self.sides.lock();
        edit(&mut sides);
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

    /// Polls if one is due and nobody else is polling; never waits.
    fn refresh(&self) {
        let now = self.monotonic_ns();
        if now < self.next_poll_ns.load(Ordering::Acquire) {
            return;
        }
        let warning = {
            let Some(mut poller) = self.poller.try_lock() else {
                return;
            };
            if now < self.next_poll_ns.load(Ordering::Acquire) {
                return;
            }
            self.poll(now, &mut poller)
        };
        self.emit(warning);
    }

    /// Re-reads the environment and the file; returns a warning to log once the lock is gone.
    fn poll(&self, now_ns: u64, poller: &mut Poller) -> Option<String> {
        let interval = u64::try_from(self.config.poll_interval.as_nanos()).unwrap_or(u64::MAX);
        self.next_poll_ns
            .store(now_ns.saturating_add(interval), Ordering::Release);

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

        let path = self.config.state_file.as_deref()?;
        let (result, signature) = match state_file::look(path, poller.seen) {
            Look::Unchanged => return None,
            Look::Missing => (Ok(State::default()), None),
            Look::Read { result, signature } => (result, signature),
        };
        poller.seen = signature;
        match result {
            Ok(state) => {
                poller.warned = false;
                let changed = self.sides.lock().file != state;
                if changed {
                    self.update_sides(|sides| sides.file = state);
                }
                None
            }
            Err(_) if poller.warned => None,
            Err(reason) => {
                poller.warned = true;
                Some(format!(
                    "maintenance state file {} {reason}; keeping the last good state",
                    path.display()
                ))
            }
        }
    }

    fn emit(&self, warning: Option<String>) {
        if let Some(message) = warning {
            (self.hooks.warn)(&message);
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
            }
        }

        fn switch(&self, state_file: Option<PathBuf>, poll: Duration) -> Maintenance {
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
        assert!(!switch.active(), "polled before the interval ran out");
        rig.clock.advance(SECOND);
        assert!(switch.active());
        assert_eq!(switch.status().source, Some(Source::Env));
        rig.set_env("off");
        rig.clock.advance(SECOND / 2);
        assert!(switch.active());
        rig.clock.advance(SECOND / 2);
        assert!(!switch.active());
    }

    #[test]
    fn zero_interval_looks_every_time_and_no_env_var_ignores_it() {
        let rig = Rig::new();
        let switch = rig.switch(None, Duration::ZERO);
        rig.set_env("1");
        assert!(switch.active());
        rig.set_env("0");
        assert!(!switch.active());

        rig.set_env("1");
        let config = Config {
            env_var: None,
            poll_interval: Duration::ZERO,
            ..Config::default()
        };
        let blind = Maintenance::with_hooks(config, rig.hooks());
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
        rig.clock.advance(SECOND);
        let status = reader.status();
        assert_eq!(
            (status.active, status.source, status.message.as_deref()),
            (true, Some(Source::File), Some("back soon"))
        );
        writer.drain(false).expect("write");
        writer.disable(false).expect("write");
        rig.clock.advance(SECOND);
        assert!(!reader.active());
        assert!(reader.draining(), "disable kept the drain");
        writer.undrain(false).expect("write");
        rig.clock.advance(SECOND);
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
        rig.clock.advance(SECOND);
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
            rig.clock.advance(SECOND);
            assert!(reader.active(), "{garbage:?} lost the last good state");
            assert!(reader.status().active);
        }
        assert_eq!(rig.warnings(), 1, "{:?}", rig.warnings.lock());
        assert!(rig.warnings.lock()[0].contains("is empty"));

        fs::write(&path, "{\"active\": false}").expect("write");
        rig.clock.advance(SECOND);
        assert!(!reader.active());
        fs::write(&path, "nope").expect("write");
        rig.clock.advance(SECOND);
        assert!(!reader.active());
        assert_eq!(rig.warnings(), 2, "a good read re-arms the warning");

        fs::remove_file(&path).expect("rm");
        fs::create_dir(&path).expect("mkdir");
        rig.clock.advance(SECOND);
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
        let switch = Arc::new(rig.switch(Some(path.clone()), Duration::ZERO));
        let writer = rig.switch(Some(path), Duration::ZERO);
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
        assert!(!switch.active());
        assert_eq!(rig.warnings(), 0);
    }
}
