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

fn shared(config: Config) -> Breaker {
    Breaker::shared(config).expect("valid config")
}

#[test]
fn a_shared_breaker_leaves_its_own_opens_and_closes_for_the_fleet() {
    let b = shared(Config {
        failure_threshold: 1,
        reset_timeout: 10.0,
        ..Config::default()
    });
    assert_eq!(b.take_publish(), None);
    run(&b, Outcome::Failure, 0.0);
    let before = crate::clock::now_unix_f64();
    let (change, count) = b.take_publish().expect("an open to publish");
    let Shared::Open { until, open_for } = change else {
        panic!("{change:?}");
    };
    assert_eq!(open_for, 10.0);
    assert!((until - before - 10.0).abs() < 1.0, "{until} vs {before}");
    assert_eq!(count, b.published());
    assert_eq!(b.take_publish(), None, "taken once");
    // Half-open is no news (every breaker gets there on its own); the close after it is.
    assert_eq!(b.state(10.0).0, State::HalfOpen);
    assert_eq!(b.take_publish(), None);
    run(&b, Outcome::Success, 10.0);
    assert_eq!(b.take_publish().map(|p| p.0), Some(Shared::Closed));
}

#[test]
fn a_local_breaker_publishes_nothing() {
    let b = breaker(Config {
        failure_threshold: 1,
        ..Config::default()
    });
    run(&b, Outcome::Failure, 0.0);
    assert_eq!(b.take_publish(), None);
}

#[test]
fn a_failed_publication_is_put_back_unless_a_newer_change_came() {
    let b = shared(Config {
        failure_threshold: 1,
        ..Config::default()
    });
    run(&b, Outcome::Failure, 0.0);
    let (open, count) = b.take_publish().expect("open");
    b.unpublish(open, count);
    assert_eq!(b.take_publish().map(|p| p.0), Some(open));
    b.reset(1.0);
    b.unpublish(open, count);
    assert_eq!(b.take_publish().map(|p| p.0), Some(Shared::Closed));
}

#[test]
fn the_fleet_opens_and_closes_it_at_the_next_look() {
    let b = shared(Config {
        reset_timeout: 30.0,
        ..Config::default()
    });
    let seen = b.published();
    let until = crate::clock::now_unix_f64() + 20.0;
    assert!(b.offer(
        Shared::Open {
            until,
            open_for: 30.0
        },
        seen
    ));
    let (state, t) = b.state(100.0);
    assert_eq!(state, State::Open);
    let t = t.expect("a transition to announce");
    assert_eq!(t.reason, Reason::OpenedElsewhere);
    assert_eq!(
        t.to_string(),
        "closed -> open (opened elsewhere in the fleet), next probe in 30s"
    );
    let left = b.retry_after(100.0);
    assert!((19.0..=20.0).contains(&left), "{left}");
    // Applying what the fleet said is not news for the fleet.
    assert_eq!(b.take_publish(), None);
    assert!(b.admit(100.0).0.is_err());
    assert!(b.offer(Shared::Closed, seen));
    let (_, t) = b.admit(101.0);
    assert_eq!(
        t.map(|t| (t.to, t.reason)),
        Some((State::Closed, Reason::ClosedElsewhere))
    );
}

#[test]
fn an_open_period_already_over_elsewhere_makes_it_half_open() {
    let b = shared(Config::default());
    let until = crate::clock::now_unix_f64() - 1.0;
    b.offer(
        Shared::Open {
            until,
            open_for: 30.0,
        },
        b.published(),
    );
    let (state, t) = b.state(5.0);
    assert_eq!(state, State::HalfOpen);
    assert_eq!(t.map(|t| t.reason), Some(Reason::OpenedElsewhere));
}

#[test]
fn what_the_fleet_said_before_a_local_change_is_dropped() {
    let b = shared(Config {
        failure_threshold: 1,
        ..Config::default()
    });
    let seen = b.published();
    run(&b, Outcome::Failure, 0.0);
    assert!(!b.offer(Shared::Closed, seen), "read before the local open");
    assert_eq!(b.state(1.0).0, State::Open);
}

#[test]
fn half_open_probes_only_under_the_reservations_held() {
    let b = shared(Config {
        failure_threshold: 1,
        reset_timeout: 1.0,
        half_open_max_calls: 3,
        ..Config::default()
    });
    run(&b, Outcome::Failure, 0.0);
    b.set_allowance(Some(0));
    let refused = b.admit(2.0).0.expect_err("no reservation");
    assert_eq!((refused.state, refused.retry_after), (State::HalfOpen, 0.0));
    b.set_allowance(Some(1));
    let probe = admitted(&b, 2.0);
    assert!(probe.probe);
    assert!(b.admit(2.0).0.is_err(), "one reservation, one probe");
    // The store is lost: local rules, half_open_max_calls probes.
    b.set_allowance(None);
    admitted(&b, 2.0);
    admitted(&b, 2.0);
    assert!(b.admit(2.0).0.is_err());
    assert_eq!(b.stats().probes_started, 3);
}
