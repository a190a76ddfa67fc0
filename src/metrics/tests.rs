use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::layout::{bucket_of, region_words, Region, BOUNDS_NANOS, BUCKETS, NAMED_CAPACITY};
use super::render::{families, render, Format, LE};
use super::*;

fn words(slots: usize) -> Vec<AtomicU64> {
    (0..region_words(slots))
        .map(|_| AtomicU64::new(0))
        .collect()
}

fn region(words: &[AtomicU64], slots: usize) -> Region<'_> {
    let region = Region::new(words, slots).expect("right length");
    region.init_header(1);
    region
}

fn alive_set(pids: &[u64]) -> impl Fn(u64) -> bool + '_ {
    move |pid| pids.contains(&pid)
}

#[test]
fn a_duration_goes_in_the_first_bucket_whose_bound_holds_it() {
    assert_eq!(bucket_of(0), 0);
    assert_eq!(bucket_of(5_000_000), 0, "le is inclusive");
    assert_eq!(bucket_of(5_000_001), 1);
    assert_eq!(bucket_of(999_999_999), 7);
    assert_eq!(bucket_of(1_000_000_000), 7);
    assert_eq!(bucket_of(10_000_000_000), 10);
    assert_eq!(bucket_of(10_000_000_001), BUCKETS - 1, "+Inf");
    assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
}

#[test]
fn le_labels_say_the_bounds() {
    for (le, bound) in LE.iter().zip(BOUNDS_NANOS) {
        let seconds: f64 = le.parse().expect("a number");
        assert_eq!((seconds * 1e9).round() as u64, bound, "{le}");
    }
    assert_eq!(LE[BUCKETS - 1], "+Inf");
}

#[test]
fn outcomes_have_distinct_label_pairs_that_read_back() {
    let pairs: HashSet<_> = Outcome::ALL.iter().map(|o| o.labels()).collect();
    assert_eq!(pairs.len(), Outcome::ALL.len());
    for (i, outcome) in Outcome::ALL.iter().enumerate() {
        assert_eq!(*outcome as usize, i, "ALL is in index order");
        let (o, r) = outcome.labels();
        assert_eq!(Outcome::from_labels(o, r), Some(*outcome));
    }
    assert_eq!(Outcome::from_labels("shed", "maintenance"), None);
}

#[test]
fn a_slot_counts_requests_durations_and_gauges() {
    let words = words(2);
    let region = region(&words, 2);
    let slot = region.slot(Some(0)).expect("slot 0");
    slot.count(Outcome::ShedOverload);
    slot.count(Outcome::ShedOverload);
    slot.count(Outcome::Admitted);
    slot.enter();
    slot.observe_duration(Duration::from_millis(3));
    slot.observe_duration(Duration::from_millis(300));
    slot.observe_queue_time(Duration::from_secs(20));
    slot.set_limit(8);
    slot.set_maintenance(true);
    assert!(region.claim(7, &|_| true).is_some());
    let sums = region.sums(&alive_set(&[7]), true, false);
    assert_eq!(sums.requests[Outcome::ShedOverload as usize], 2);
    assert_eq!(sums.requests[Outcome::Admitted as usize], 1);
    assert_eq!(sums.duration.count(), 2);
    assert_eq!(sums.duration.buckets[0], 1);
    assert_eq!(sums.duration.buckets[bucket_of(300_000_000)], 1);
    assert_eq!(sums.duration.sum_nanos, 303_000_000);
    assert_eq!(sums.queue_time.buckets[BUCKETS - 1], 1);
    assert_eq!((sums.in_flight, sums.limit, sums.maintenance), (1, 8, true));
    assert!(!sums.draining);
    assert_eq!(sums.processes, 1);
}

#[test]
fn slots_of_live_processes_add_up_and_gauges_combine() {
    let words = words(4);
    let region = region(&words, 4);
    let pids = [11, 12, 13];
    for (n, pid) in pids.iter().enumerate() {
        let index = region.claim(*pid as u32, &|_| true).expect("a free slot");
        assert_eq!(index, n, "free slots are taken in order");
        let slot = region.slot(Some(index)).expect("slot");
        for _ in 0..=n {
            slot.count(Outcome::Exempt);
        }
        slot.set_limit(4);
        slot.set_draining(n == 1);
        slot.enter();
    }
    let sums = region.sums(&alive_set(&pids), true, false);
    assert_eq!(sums.requests[Outcome::Exempt as usize], 1 + 2 + 3);
    assert_eq!((sums.limit, sums.in_flight, sums.draining), (12, 3, true));
    assert_eq!(sums.processes, 3);
}

#[test]
fn folding_keeps_counters_drops_gauges_and_frees_the_slot() {
    let words = words(2);
    let region = region(&words, 2);
    let index = region.claim(21, &|_| true).expect("slot");
    let slot = region.slot(Some(index)).expect("slot");
    let breaker = region.entry(NamedKind::Breaker, "db").expect("entry");
    slot.count(Outcome::RefusedMaintenance);
    slot.observe_duration(Duration::from_millis(40));
    slot.count_call(breaker, CallOutcome::Failure);
    slot.set_named_gauge(breaker, BreakerState::Open.code());
    slot.set_limit(5);
    slot.enter();
    let before = region.sums(&alive_set(&[21]), true, false);
    region.fold(index);
    assert_eq!(region.owner(index), 0, "freed");
    let after = region.sums(&alive_set(&[]), true, false);
    assert_eq!(after.requests, before.requests);
    assert_eq!(after.duration, before.duration);
    assert_eq!(after.named[0].calls, before.named[0].calls);
    assert_eq!(before.named[0].states, [0, 1, 0]);
    assert_eq!(
        after.named[0].states,
        [0, 0, 0],
        "a dead process's state is dropped"
    );
    assert_eq!((after.limit, after.in_flight, after.processes), (0, 0, 0));
    // Reused: the next owner starts from zero, and nothing is counted twice.
    let again = region.claim(22, &|_| true).expect("slot");
    assert_eq!(again, index);
    let sums = region.sums(&alive_set(&[22]), true, false);
    assert_eq!(sums.requests, before.requests);
}

#[test]
fn a_scrape_folds_dead_slots_and_never_counts_them_twice() {
    let words = words(3);
    let region = region(&words, 3);
    for pid in [31, 32] {
        let index = region.claim(pid, &|_| true).expect("slot");
        region
            .slot(Some(index))
            .expect("slot")
            .count(Outcome::Probe);
    }
    let both = region.sums(&alive_set(&[31, 32]), true, true);
    assert_eq!(both.requests[Outcome::Probe as usize], 2);
    // 32 dies: the next scrape folds its slot, and every later one still counts it once.
    for _ in 0..3 {
        let sums = region.sums(&alive_set(&[31]), true, true);
        assert_eq!(sums.requests[Outcome::Probe as usize], 2);
        assert_eq!(sums.processes, 1);
    }
    assert_eq!(region.slot_of(32), None);
}

#[test]
fn claiming_reuses_the_same_pid_then_free_then_dead_slots() {
    let words = words(2);
    let region = region(&words, 2);
    assert_eq!(region.claim(41, &|_| true), Some(0));
    assert_eq!(region.claim(42, &|_| true), Some(1));
    assert_eq!(region.claim(43, &|_| true), None, "all live");
    region.slot(Some(0)).expect("slot").count(Outcome::Admitted);
    // 41 died and its pid came back: it gets its old slot, folded first.
    assert_eq!(region.claim(41, &|_| true), Some(0));
    let sums = region.sums(&alive_set(&[41, 42]), true, false);
    assert_eq!(sums.requests[Outcome::Admitted as usize], 1);
    assert_eq!(region.owner(0), 41);
    // 42 died: a newcomer takes its slot after folding it.
    assert_eq!(region.claim(44, &|pid| pid != 42), Some(1));
}

#[test]
fn names_are_registered_once_per_kind_and_overflow_is_refused() {
    let words = words(1);
    let region = region(&words, 1);
    let db = region.entry(NamedKind::Breaker, "db");
    assert_eq!(region.entry(NamedKind::Breaker, "db"), db);
    let check = region.entry(NamedKind::Check, "db");
    assert_ne!(check, db, "a check and a breaker may share a name");
    assert_eq!(region.entry(NamedKind::Breaker, &"x".repeat(97)), None);
    assert!(region.entry(NamedKind::Breaker, &"é".repeat(48)).is_some());
    for n in 3..NAMED_CAPACITY {
        assert!(region.entry(NamedKind::Check, &format!("c{n}")).is_some());
    }
    assert_eq!(region.entry(NamedKind::Check, "one too many"), None);
    assert_eq!(
        region.entry(NamedKind::Breaker, "db"),
        db,
        "known names still found"
    );
    let sums = region.sums(&|_| true, false, false);
    assert_eq!(sums.named.len(), NAMED_CAPACITY);
    assert_eq!(sums.named[2].name, "é".repeat(48));
}

#[test]
fn a_check_is_up_only_when_up_in_every_live_process_that_ran_it() {
    let words = words(3);
    let region = region(&words, 3);
    let check = region.entry(NamedKind::Check, "redis").expect("entry");
    let up = |pids: &[u64]| region.sums(&alive_set(pids), true, false).named[0].up;
    assert_eq!(up(&[]), None);
    let a = region.claim(51, &|_| true).expect("slot");
    let b = region.claim(52, &|_| true).expect("slot");
    region.slot(Some(a)).expect("a").set_named_gauge(check, 2);
    assert_eq!(up(&[51, 52]), Some(true), "52 has not run it");
    region.slot(Some(b)).expect("b").set_named_gauge(check, 1);
    assert_eq!(up(&[51, 52]), Some(false));
    assert_eq!(up(&[51]), Some(true), "a dead process's result is dropped");
}

#[test]
fn headers_that_are_not_ours_are_refused() {
    let good = words(2);
    region(&good, 2);
    assert!(Region::from_header(&good).is_ok());
    let bad_magic = words(2);
    assert!(Region::from_header(&bad_magic)
        .err()
        .is_some_and(|e| e.contains("magic")));
    let short = words(1);
    region(&short, 1);
    let truncated = &short[..short.len() - 1];
    assert!(Region::from_header(truncated)
        .err()
        .is_some_and(|e| e.contains("slots")));
    let versioned = words(1);
    region(&versioned, 1);
    versioned[1].store(99, std::sync::atomic::Ordering::Relaxed);
    assert!(Region::from_header(&versioned)
        .err()
        .is_some_and(|e| e.contains("version 99")));
    assert!(Region::from_header(&versioned[..10]).is_err());
}

#[test]
fn threads_recording_at_once_lose_nothing() {
    const THREADS: usize = 8;
    const ROUNDS: u64 = 20_000;
    let words = words(1);
    let region = region(&words, 1);
    let slot = region.slot(Some(0)).expect("slot");
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for n in 0..ROUNDS {
                    slot.count(Outcome::Admitted);
                    slot.enter();
                    slot.leave();
                    slot.observe_duration(Duration::from_millis(n % 40));
                }
            });
        }
    });
    let sums = region.sums(&|_| true, false, false);
    let total = THREADS as u64 * ROUNDS;
    assert_eq!(sums.requests[Outcome::Admitted as usize], total);
    assert_eq!(sums.duration.count(), total);
    assert_eq!(sums.in_flight, 0);
    let per_thread: u64 = (0..ROUNDS).map(|n| (n % 40) * 1_000_000).sum();
    assert_eq!(sums.duration.sum_nanos, per_thread * THREADS as u64);
}

fn sample_sums() -> Sums {
    let words = words(1);
    let region = region(&words, 1);
    let slot = region.slot(Some(0)).expect("slot");
    let breaker = region
        .entry(NamedKind::Breaker, "pay\"ments\\\n")
        .expect("entry");
    let check = region.entry(NamedKind::Check, "db").expect("entry");
    slot.count(Outcome::Admitted);
    slot.count(Outcome::ShedOverload);
    slot.observe_duration(Duration::from_millis(20));
    slot.observe_duration(Duration::from_secs(30));
    slot.set_named_gauge(breaker, BreakerState::HalfOpen.code());
    slot.count_call(breaker, CallOutcome::Rejected);
    slot.set_named_gauge(check, 2);
    slot.set_limit(16);
    region.sums(&|_| true, false, false)
}

#[test]
fn the_text_format_has_help_type_and_cumulative_buckets() {
    let text = render(&families(&sample_sums()), Format::Prometheus);
    let expected = [
        "# HELP tidegate_requests_total Requests decided by tidegate, by outcome and reason.",
        "# TYPE tidegate_requests_total counter",
        "tidegate_requests_total{outcome=\"admitted\",reason=\"none\"} 1",
        "tidegate_requests_total{outcome=\"shed\",reason=\"overload\"} 1",
        "tidegate_requests_total{outcome=\"failed_fast\",reason=\"dependency\"} 0",
        "# TYPE tidegate_request_duration_seconds histogram",
        "tidegate_request_duration_seconds_bucket{le=\"0.01\"} 0",
        "tidegate_request_duration_seconds_bucket{le=\"0.025\"} 1",
        "tidegate_request_duration_seconds_bucket{le=\"10.0\"} 1",
        "tidegate_request_duration_seconds_bucket{le=\"+Inf\"} 2",
        "tidegate_request_duration_seconds_sum 30.02",
        "tidegate_request_duration_seconds_count 2",
        "tidegate_queue_time_seconds_count 0",
        "tidegate_concurrency_limit 16",
        "tidegate_maintenance_active 0",
        "tidegate_breaker_state{breaker=\"pay\\\"ments\\\\\\n\",state=\"half_open\"} 1",
        "tidegate_breaker_state{breaker=\"pay\\\"ments\\\\\\n\",state=\"open\"} 0",
        "# TYPE tidegate_breaker_calls_total counter",
        "tidegate_breaker_calls_total{breaker=\"pay\\\"ments\\\\\\n\",outcome=\"rejected\"} 1",
        "tidegate_health_check_up{check=\"db\"} 1",
    ];
    let lines: HashSet<&str> = text.lines().collect();
    for line in expected {
        assert!(lines.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("# EOF"));
    assert!(!text.contains("# UNIT"));
}

#[test]
fn openmetrics_names_counters_without_total_and_ends_with_eof() {
    let text = render(&families(&sample_sums()), Format::OpenMetrics);
    assert!(text.contains("# TYPE tidegate_requests counter\n"));
    assert!(text.contains("# UNIT tidegate_request_duration_seconds seconds\n"));
    assert!(text.contains("tidegate_requests_total{outcome=\"admitted\",reason=\"none\"} 1\n"));
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(text.matches("# EOF").count(), 1);
}

#[test]
fn families_without_samples_are_left_out() {
    let text = render(&families(&Sums::default()), Format::Prometheus);
    assert!(text.contains("tidegate_in_flight_requests 0"));
    assert!(!text.contains("tidegate_breaker_state"));
    assert!(!text.contains("tidegate_health_check_up"));
}

#[test]
fn the_format_follows_accept() {
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
    for text in [
        None,
        Some(""),
        Some("*/*"),
        Some("text/plain"),
        Some("text/plain, application/openmetrics-text;q=0.5"),
        Some("application/openmetrics-text;q=0"),
        Some("garbage;;;=,"),
    ] {
        assert_eq!(Format::from_accept(text), Format::Prometheus, "{text:?}");
    }
}

#[cfg(unix)]
mod shared_file {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "tidegate-metrics-test-{tag}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_new_file_has_a_fixed_size_and_a_unique_name() {
        let dir = TempDir::new("create");
        let a = create_shared(&dir.0, 64).expect("created");
        let b = create_shared(&dir.0, 64).expect("created");
        assert_ne!(a, b);
        let size = std::fs::metadata(&a).expect("exists").len();
        assert_eq!(size, (region_words(64) * 8) as u64);
        let sums = sums_of_file(&a).expect("readable");
        assert_eq!(sums.processes, 0);
        assert!(!fold(&a, 12345).expect("readable"), "no slot of that pid");
        assert!(matches!(
            create_shared(&dir.0, 0),
            Err(MetricsError::Arg(_))
        ));
        assert!(matches!(
            create_shared(&dir.0.join("missing"), 4),
            Err(MetricsError::Io { .. })
        ));
    }

    #[test]
    fn garbage_and_truncated_files_are_refused() {
        let dir = TempDir::new("garbage");
        let garbage = dir.0.join("garbage.shm");
        std::fs::write(&garbage, vec![7u8; region_words(2) * 8]).expect("written");
        assert!(matches!(
            sums_of_file(&garbage),
            Err(MetricsError::BadFile { .. })
        ));
        let good = create_shared(&dir.0, 2).expect("created");
        let file = OpenOptions::new().write(true).open(&good).expect("open");
        file.set_len((region_words(1) * 8) as u64)
            .expect("truncate");
        let err = sums_of_file(&good).expect_err("truncated");
        assert!(err.to_string().contains("2 slots"), "{err}");
        let empty = dir.0.join("empty.shm");
        std::fs::write(&empty, b"").expect("written");
        assert!(matches!(
            sums_of_file(&empty),
            Err(MetricsError::BadFile { .. })
        ));
        assert!(matches!(
            sums_of_file(&dir.0.join("missing")),
            Err(MetricsError::Io { .. })
        ));
    }
}

/// Not a test: what the per-request calls and a scrape cost. Run it in a release build:
/// `cargo test --release --lib metrics::tests::cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand in a release build"]
fn cost() {
    const ROUNDS: u32 = 2_000_000;
    let measure = |what: &str, f: &dyn Fn()| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            for _ in 0..ROUNDS {
                f();
            }
            best = best.min(started.elapsed().as_secs_f64() * 1e9 / f64::from(ROUNDS));
        }
        eprintln!("{what:<58} {best:>7.1} ns");
        best
    };
    let empty = measure("empty loop", &|| std::hint::black_box(()));
    let clock = measure("Instant::now() x2", &|| {
        std::hint::black_box(Instant::now());
        std::hint::black_box(Instant::now());
    });
    let recorded = measure("admit() + release(elapsed), clock included", &|| {
        let started = Instant::now();
        admit();
        release(std::hint::black_box(started.elapsed()));
    });
    eprintln!(
        "metrics per admitted request (clock excluded):             {:>7.1} ns",
        recorded - clock.max(empty)
    );
    let shed = measure("record(ShedOverload)", &|| record(Outcome::ShedOverload));
    let _ = shed;

    let slots = 64;
    let words = words(slots);
    let region = region(&words, slots);
    for n in 0..16 {
        region.entry(NamedKind::Breaker, &format!("breaker-{n}"));
    }
    for pid in 0..slots as u32 {
        let index = region.claim(pid + 1, &|_| true).expect("slot");
        let slot = region.slot(Some(index)).expect("slot");
        for n in 0..100 {
            slot.count(Outcome::Admitted);
            slot.observe_duration(Duration::from_millis(n));
        }
    }
    let started = Instant::now();
    let scrapes = 1000;
    let mut bytes = 0;
    for _ in 0..scrapes {
        let sums = region.sums(&|_| true, true, true);
        bytes = render(&families(&sums), Format::Prometheus).len();
    }
    eprintln!(
        "scrape of 64 slots, 16 breakers: sum + render ({bytes} bytes) {:>7.1} us",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(scrapes)
    );
}
