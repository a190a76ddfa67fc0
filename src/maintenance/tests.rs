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
            store: state_file.map(Store::File),
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
        store: Some(Store::File(path)),
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
fn a_process_without_its_poller_starts_one_within_a_few_reads() {
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

#[test]
fn a_switch_with_nothing_to_poll_never_starts_a_poller() {
    let rig = Rig::new();
    let hooks = Hooks {
        background: true,
        ..rig.hooks()
    };
    let config = Config {
        env_var: None,
        ..Config::default()
    };
    let switch = Maintenance::with_hooks(config, hooks);
    rig.clock.advance(Duration::from_secs(3600));
    for _ in 0..64 {
        assert!(!switch.active());
        assert!(!switch.status().active);
    }
    assert_eq!(
        switch.poller_pid.load(Ordering::SeqCst),
        0,
        "a thread was started with nothing to look at"
    );
}
