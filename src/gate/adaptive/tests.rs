use super::sim::{run, SimConfig, SimResult};
use super::*;

/// The service time of the simulations: 20 ms.
const S: f64 = 0.020;
const WORKERS: [usize; 3] = [4, 8, 32];

fn config(algorithm: Algorithm, initial: usize) -> LimiterConfig {
    LimiterConfig {
        initial_limit: initial,
        algorithm,
        ..LimiterConfig::default()
    }
}

fn gradient() -> Algorithm {
    Algorithm::Gradient2(Gradient2Config::default())
}

fn aimd(timeout: f64) -> Algorithm {
    Algorithm::Aimd(AimdConfig {
        timeout,
        ..AimdConfig::default()
    })
}

fn vegas() -> Algorithm {
    Algorithm::Vegas(VegasConfig::default())
}

fn simulate(n: usize, algorithm: Algorithm, initial: usize, duration: f64) -> SimResult {
    run(&SimConfig::new(n, S, duration), config(algorithm, initial))
}

/// 10× too high and 10× too low (at least 1).
fn starts(n: usize) -> [usize; 2] {
    [10 * n, (n / 10).max(1)]
}

fn describe(name: &str, n: usize, initial: usize, r: &SimResult, end: f64) -> String {
    let (median, min, max) = r.limit_stats(end - 5.0, end);
    format!(
        "{name:10} N={n:2} start={initial:3}: converged at {} s, last 5 s: median {median} \
         min {min} max {max}, p90 rtt {:.1} ms; throughput over 10..{end} s {:.0}/s of {:.0}/s",
        r.converged_at(n, 0.2, end)
            .map_or("never".to_string(), |t| format!("{t:.1}")),
        1e3 * r.rtt_percentile(end - 5.0, end, 0.9),
        r.throughput(10.0, end),
        n as f64 / S,
    )
}

/// Prints the numbers per algorithm, N and start:
/// `cargo test adaptive::tests::report -- --ignored --nocapture`.
#[test]
#[ignore = "prints measurements; the tests below check them"]
fn report() {
    for n in WORKERS {
        for initial in starts(n) {
            for (name, algo) in [
                ("gradient2", gradient()),
                ("aimd", Algorithm::Aimd(AimdConfig::default())),
                ("aimd 0.1 s", aimd(0.1)),
                ("vegas", vegas()),
            ] {
                let r = simulate(n, algo, initial, 30.0);
                eprintln!("{}", describe(name, n, initial, &r, 30.0));
            }
        }
        for (what, before, after) in [("3x slower", S, 3.0 * S), ("3x faster", 3.0 * S, S)] {
            let mut sim = SimConfig::new(n, before, 40.0);
            sim.service_change = Some((20.0, after));
            let r = run(&sim, config(gradient(), n));
            let (median, min, max) = r.limit_stats(30.0, 40.0);
            eprintln!(
                "gradient2  N={n:2} {what} at 20 s: converged at {} s, 30..40 s: median {median} \
                 min {min} max {max}; p90 rtt after the change {:.1} ms",
                r.converged_at(n, 0.2, 40.0)
                    .map_or("never".to_string(), |t| format!("{t:.1}")),
                1e3 * r.rtt_percentile(20.0, 40.0, 0.9),
            );
        }
    }
}

// --- Gradient2, the default -------------------------------------------------------------

/// From 10× too high and 10× too low, for 4, 8 and 32 workers at 20 ms: every two-second
/// median of the limit (probes left out) is within 20 % of N from 10 s on; over the last
/// 5 s of 30 the median is within 20 % of N and the limit (outside probes) stays within
/// [N − 1, 1.25 N + 1]; the p90 RTT stays under 1.5 S and throughput over 10–30 s is at
/// least 92 % of what N workers can do (a probe costs some).
#[test]
fn gradient2_converges_from_both_sides_and_stays() {
    for n in WORKERS {
        for initial in starts(n) {
            let r = simulate(n, gradient(), initial, 30.0);
            let what = describe("gradient2", n, initial, &r, 30.0);
            let converged = r.converged_at(n, 0.2, 30.0).expect(&what);
            assert!(converged <= 10.0, "{what}");
            let (median, min, max) = r.limit_stats(25.0, 30.0);
            let nf = n as f64;
            assert!((median as f64 - nf).abs() <= 0.2 * nf, "{what}");
            assert!(min + 1 >= n, "{what}");
            assert!(max as f64 <= 1.25 * nf + 1.0, "{what}");
            assert!(r.rtt_percentile(25.0, 30.0, 0.9) <= 1.5 * S, "{what}");
            assert!(r.throughput(10.0, 30.0) >= 0.92 * nf / S, "{what}");
        }
    }
}

/// The service gets three times slower at 20 s. Passive measurement cannot tell that from
/// queueing, so the limit is cut at once (within the first window), a cut that does not
/// help starts a probe, and the limit is back within 20 % of N (two-second medians) by
/// 30 s. The p90 RTT of everything that completes after the change stays <= 2 × the new
/// service time.
#[test]
fn gradient2_tracks_a_slower_service() {
    for n in WORKERS {
        let mut sim = SimConfig::new(n, S, 40.0);
        sim.service_change = Some((20.0, 3.0 * S));
        let r = run(&sim, config(gradient(), n));
        let what = describe("gradient2", n, n, &r, 40.0);
        let before = r.step_at(20.0).limit;
        let moved = r
            .steps
            .iter()
            .find(|s| s.time > 20.0 && s.limit != before)
            .expect(&what);
        assert!(moved.time <= 21.0, "{what}: first move at {}", moved.time);
        let converged = r.converged_at(n, 0.2, 40.0).expect(&what);
        assert!(converged <= 30.0, "{what}");
        let p90 = r.rtt_percentile(20.0, 40.0, 0.9);
        assert!(p90 <= 2.0 * 3.0 * S, "{what}: p90 {p90}");
    }
}

/// The service gets three times faster at 20 s: the first window that shows it takes over
/// as the baseline, so the limit does not run up to three times N.
#[test]
fn gradient2_tracks_a_faster_service() {
    for n in WORKERS {
        let mut sim = SimConfig::new(n, 3.0 * S, 40.0);
        sim.service_change = Some((20.0, S));
        let r = run(&sim, config(gradient(), n));
        let what = describe("gradient2", n, n, &r, 40.0);
        let (median, _, max) = r.limit_stats(20.0, 40.0);
        let nf = n as f64;
        assert!((median as f64 - nf).abs() <= 0.2 * nf, "{what}");
        assert!(max as f64 <= 1.25 * nf + 1.0, "{what}");
        assert!(r.rtt_percentile(20.5, 40.0, 0.9) <= 1.5 * S, "{what}");
    }
}

// --- AIMD and Vegas, as published -------------------------------------------------------

/// AIMD with its published 5 s timeout never sees a reason to come down in a system that
/// drops nothing: it grows while at least half the limit is in flight, so it ends between
/// the number of clients (64) and twice that plus one, or stays where it started above. It
/// caps nothing; the queue is every client that is not being served.
#[test]
fn aimd_without_drops_grows_until_half_used() {
    for n in WORKERS {
        for initial in starts(n) {
            let r = simulate(n, Algorithm::Aimd(AimdConfig::default()), initial, 30.0);
            let what = describe("aimd", n, initial, &r, 30.0);
            let (median, _, _) = r.limit_stats(25.0, 30.0);
            assert!((64..=129.max(initial)).contains(&median), "{what}");
        }
    }
}

/// With a timeout (here 100 ms, 5 × S) AIMD keeps the RTT near it: the p90 RTT is at most
/// 1.1 × the timeout, whatever the start. It does not find N: the limit settles where the
/// queue makes the RTT reach the timeout (about 5 N), or above when even all 64 clients do
/// not reach it (N = 32: 64 in flight give 40 ms).
#[test]
fn aimd_with_a_timeout_keeps_the_rtt_under_it() {
    for n in WORKERS {
        for initial in starts(n) {
            let r = simulate(n, aimd(0.1), initial, 30.0);
            let what = describe("aimd 0.1 s", n, initial, &r, 30.0);
            assert!(r.rtt_percentile(10.0, 30.0, 0.9) <= 0.11, "{what}");
            if n < 16 {
                let (median, _, _) = r.limit_stats(25.0, 30.0);
                let expected = 5.0 * n as f64;
                assert!(
                    (median as f64 - expected).abs() <= 0.25 * expected,
                    "{what}"
                );
            }
        }
    }
}

/// Vegas started low learns the true no-load RTT and keeps a queue of alpha..beta (3..6)
/// requests: its limit ends within [N + 1, N + 7]. Started 10× high it never sees an
/// unqueued RTT and stays far above N (at least 3 N): the failure an active baseline fixes.
#[test]
fn vegas_keeps_a_small_queue_from_below_and_never_recovers_from_above() {
    for n in WORKERS {
        let [high, low] = starts(n);
        let r = simulate(n, vegas(), low, 30.0);
        let what = describe("vegas", n, low, &r, 30.0);
        let (median, _, _) = r.limit_stats(25.0, 30.0);
        assert!(median > n && median <= n + 7, "{what}");
        let r = simulate(n, vegas(), high, 30.0);
        let what = describe("vegas", n, high, &r, 30.0);
        let (median, _, _) = r.limit_stats(25.0, 30.0);
        assert!(median >= 3 * n, "{what}");
    }
}

// --- The limiter itself -----------------------------------------------------------------

fn limiter(algorithm: Algorithm, initial: usize, min: usize, max: usize) -> Limiter {
    Limiter::new(LimiterConfig {
        initial_limit: initial,
        min_limit: min,
        max_limit: max,
        algorithm,
        ..LimiterConfig::default()
    })
    .expect("valid config")
}

/// Feeds `count` samples of `rtt` with `inflight`, evenly over `span` seconds from `start`.
fn feed(l: &mut Limiter, start: f64, span: f64, count: usize, rtt: f64, inflight: usize) -> f64 {
    for i in 0..count {
        let now = start + span * (i + 1) as f64 / count as f64;
        l.on_sample(now, rtt, inflight, false);
    }
    start + span
}

#[test]
fn bad_configs_name_the_parameter() {
    type Spoil = fn(&mut LimiterConfig);
    let cases: [(&str, Spoil); 12] = [
        ("min_limit", |c| c.min_limit = 0),
        ("max_limit", |c| c.max_limit = 0),
        ("initial", |c| c.initial_limit = 5000),
        ("min_window", |c| c.window.min_window = 0.0),
        ("max_window", |c| c.window.max_window = f64::NAN),
        ("max_window", |c| c.window.max_window = 0.1),
        ("window_size", |c| c.window.window_size = 0),
        ("min_rtt_threshold", |c| c.window.min_rtt_threshold = -1.0),
        ("tolerance", |c| {
            c.algorithm = Algorithm::Gradient2(Gradient2Config {
                tolerance: f64::INFINITY,
                ..Gradient2Config::default()
            })
        }),
        ("probe_limit", |c| {
            c.algorithm = Algorithm::Gradient2(Gradient2Config {
                probe_limit: 0,
                ..Gradient2Config::default()
            })
        }),
        ("backoff_ratio", |c| {
            c.algorithm = Algorithm::Aimd(AimdConfig {
                backoff_ratio: 1.0,
                ..AimdConfig::default()
            })
        }),
        ("beta", |c| {
            c.algorithm = Algorithm::Vegas(VegasConfig {
                beta: 1.0,
                ..VegasConfig::default()
            })
        }),
    ];
    for (param, spoil) in cases {
        let mut c = LimiterConfig::default();
        spoil(&mut c);
        let err = Limiter::new(c).expect_err(param);
        assert!(err.to_string().starts_with(&format!("{param}: ")), "{err}");
    }
    assert_eq!(
        Algorithm::named("bbr").expect_err("unknown").to_string(),
        "algorithm: must be 'gradient2', 'aimd' or 'vegas', got \"bbr\""
    );
    assert!(matches!(Algorithm::named("vegas"), Ok(Algorithm::Vegas(_))));
}

#[test]
fn gradient2_probes_first_then_cuts_a_queue_to_what_the_service_sustains() {
    let mut l = limiter(gradient(), 40, 1, 1000);
    assert!(l.probing());
    assert_eq!(l.limit(), 2);
    // Samples admitted with more than the probe limit in flight do not count.
    let t = feed(&mut l, 0.0, 0.1, 50, 0.2, 40);
    assert!(l.probing());
    let t = feed(&mut l, t, 0.25, 25, 0.020, 2);
    assert!(!l.probing());
    assert_eq!(l.limit(), 40);
    let baseline = l.baseline().expect("a baseline");
    assert!((baseline - 0.020).abs() < 1e-9, "{baseline}");
    // Each feed below is one window: 20 samples over 0.26 s.
    // 40 in flight at 2 × the baseline: a queue; 40 / 2 = 20.
    let t = feed(&mut l, t, 0.26, 20, 0.040, 40);
    assert_eq!(l.limit(), 20);
    // Samples admitted before the cut (their RTT reaches back past it) are left out.
    let t = feed(&mut l, t, 0.26, 20, 0.5, 40);
    assert_eq!(l.limit(), 20);
    // 20 in flight at the baseline: room to grow, by 5 % plus half a request.
    let t = feed(&mut l, t, 0.26, 20, 0.020, 20);
    assert_eq!(l.limit(), 21);
    // 5 in flight: fewer than half the limit, so no growth.
    let t = feed(&mut l, t, 0.26, 20, 0.020, 5);
    assert_eq!(l.limit(), 21);
    // 5 in flight at 1.5 × the baseline: the cut goes to what is in flight, 5 / 1.5 = 3.
    let t = feed(&mut l, t, 0.26, 20, 0.030, 5);
    assert_eq!(l.limit(), 3);
    // The same RTT with fewer in flight: the cut did not help, so the baseline is stale
    // (the service got slower) and a probe measures it again.
    // (30 samples: the first few were admitted before the cut.)
    feed(&mut l, t, 0.26, 30, 0.030, 3);
    assert!(l.probing());
    assert_eq!(l.limit(), 2);
}

#[test]
fn gradient2_leaves_an_unused_limit_alone_and_a_silent_probe_times_out() {
    let mut l = limiter(gradient(), 20, 1, 1000);
    // No sample at all: the probe gives up after its timeout on a poll.
    assert_eq!(l.poll(0.0), None);
    l.on_sample(0.0, 5.0, 30, false);
    assert!(l.probing());
    assert_eq!(l.poll(1.0), None);
    assert_eq!(l.poll(2.5), Some(20));
    assert_eq!(l.baseline(), None);
    // Without a baseline nothing moves.
    feed(&mut l, 2.5, 1.0, 100, 0.020, 20);
    assert_eq!(l.limit(), 20);
}

#[test]
fn windows_need_their_length_and_their_samples() {
    let mut l = limiter(aimd(5.0), 10, 1, 100);
    // Under the RTT threshold, and nonsense: ignored.
    for rtt in [50e-6, 0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(l.on_sample(1.0, rtt, 10, false), None);
    }
    // 19 samples over a full window: not enough; the 20th closes it.
    let t = feed(&mut l, 0.0, 0.3, 19, 0.020, 10);
    assert_eq!(l.limit(), 10);
    assert_eq!(l.on_sample(t, 0.020, 10, false), Some(11));
    // 100 samples in 0.1 s: the window (0.25 s) is not over yet.
    let t = feed(&mut l, t, 0.1, 100, 0.020, 10);
    assert_eq!(l.limit(), 11);
    assert_eq!(l.on_sample(t + 0.15, 0.020, 10, false), Some(12));
    // A window that reaches max_window (2 s) without 20 samples is thrown away.
    let t = feed(&mut l, t + 0.15, 2.5, 10, 0.020, 10);
    assert_eq!(l.limit(), 12);
    let _ = t;
    // A window lasts twice the fastest RTT of the one before: 1 s after one of 0.5 s RTTs.
    let mut l = limiter(aimd(5.0), 10, 1, 100);
    for i in 0..=24 {
        assert_eq!(l.on_sample(f64::from(i) * 0.01, 0.5, 10, false), None);
    }
    assert_eq!(l.on_sample(0.25, 0.5, 10, false), Some(11));
    for i in 26..125 {
        assert_eq!(l.on_sample(f64::from(i) * 0.01, 0.5, 11, false), None);
    }
    assert_eq!(l.on_sample(1.25, 0.5, 11, false), Some(12));
}

#[test]
fn aimd_backs_off_on_a_drop() {
    let mut l = limiter(aimd(5.0), 50, 1, 100);
    let mut t = 0.0;
    for _ in 0..19 {
        l.on_sample(t, 0.02, 50, false);
        t += 0.02;
    }
    assert_eq!(l.on_sample(t, 0.02, 50, true), Some(45));
}

/// Arbitrary samples, including NaN, infinities, negative and huge values and a clock that
/// jumps back: never a panic, and the limit never leaves [min_limit, max_limit].
#[test]
fn the_limit_never_leaves_its_bounds() {
    let mut rng = Rng::new(7);
    let weird = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        0.0,
        1e-300,
        1e300,
        f64::MAX,
        f64::MIN_POSITIVE,
    ];
    for case in 0..300 {
        let min = 1 + (rng.next_f64() * 10.0) as usize;
        let max = min + (rng.next_f64() * 200.0) as usize;
        let initial = min + (rng.next_f64() * (max - min) as f64) as usize;
        let algorithm = match case % 3 {
            0 => gradient(),
            1 => aimd(0.05),
            _ => vegas(),
        };
        let mut l = Limiter::new(LimiterConfig {
            initial_limit: initial,
            min_limit: min,
            max_limit: max,
            algorithm,
            window: WindowConfig {
                window_size: 1 + (rng.next_f64() * 30.0) as u32,
                ..WindowConfig::default()
            },
            seed: case,
        })
        .expect("valid config");
        let mut now = 0.0;
        for _ in 0..3000 {
            let pick = |rng: &mut Rng, scale: f64| {
                if rng.next_f64() < 0.05 {
                    weird[(rng.next_f64() * weird.len() as f64) as usize]
                } else {
                    rng.next_f64() * scale
                }
            };
            now += pick(&mut rng, 0.05);
            if rng.next_f64() < 0.01 {
                now -= 10.0;
            }
            let rtt = pick(&mut rng, 1.0);
            let inflight = (rng.next_f64() * 2.0 * max as f64) as usize;
            let changed = if rng.next_f64() < 0.05 {
                l.poll(now)
            } else {
                l.on_sample(now, rtt, inflight, rng.next_f64() < 0.05)
            };
            let limit = l.limit();
            assert!((min..=max).contains(&limit), "{limit} not in {min}..={max}");
            if let Some(new) = changed {
                assert_eq!(new, limit);
            }
            assert!(l.estimate().is_finite());
        }
    }
}

/// What `on_sample` costs: `cargo test --release on_sample_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn on_sample_cost() {
    let mut l = limiter(gradient(), 32, 1, 1000);
    let rounds = 10_000_000u32;
    let started = std::time::Instant::now();
    let mut t = 0.0;
    for i in 0..rounds {
        t += 1e-4;
        let rtt = 0.020 + f64::from(i % 7) * 1e-3;
        std::hint::black_box(l.on_sample(t, rtt, 32, false));
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(rounds);
    eprintln!("on_sample: {ns:.1} ns per sample, limit {}", l.limit());
}
