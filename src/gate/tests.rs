use super::*;
use std::sync::{Arc, Barrier};
use std::thread;

#[test]
fn zero_limit_is_refused() {
    assert!(Gate::new(0).is_err());
    let gate = Gate::new(1).expect("valid limit");
    assert!(gate.set_limit(0).is_err());
    assert_eq!(gate.limit(), 1);
}

#[test]
fn admits_up_to_the_limit_then_rejects() {
    let gate = Gate::new(2).expect("valid limit");
    assert!(gate.try_acquire().is_some());
    assert!(gate.try_acquire().is_some());
    assert!(gate.try_acquire().is_none());
    assert_eq!(
        (gate.admitted(), gate.rejected(), gate.in_flight()),
        (2, 1, 2)
    );
    gate.release(Ticket::default());
    assert!(gate.try_acquire().is_some());
    assert_eq!(gate.peak(), 2);
}

#[test]
fn lowering_the_limit_stops_admissions_until_enough_come_back() {
    let gate = Gate::new(3).expect("valid limit");
    for _ in 0..3 {
        assert!(gate.try_acquire().is_some());
    }
    gate.set_limit(1).expect("valid limit");
    gate.release(Ticket::default());
    assert!(gate.try_acquire().is_none(), "2 in flight, limit 1");
    gate.release(Ticket::default());
    gate.release(Ticket::default());
    assert!(gate.try_acquire().is_some());
}

#[test]
fn never_exceeds_the_limit_under_contention() {
    const THREADS: usize = 16;
    const ROUNDS: usize = 20_000;
    let gate = Arc::new(Gate::new(3).expect("valid limit"));
    let inside = Arc::new(AtomicUsize::new(0));
    let worst = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (gate, inside, worst, start) =
                (gate.clone(), inside.clone(), worst.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for _ in 0..ROUNDS {
                    if gate.try_acquire().is_some() {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        worst.fetch_max(now, Ordering::SeqCst);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        gate.release(Ticket::default());
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("worker thread");
    }
    assert!(worst.load(Ordering::SeqCst) <= 3);
    assert!(gate.peak() <= 3);
    assert_eq!(gate.in_flight(), 0);
    assert_eq!(gate.admitted() + gate.rejected(), (THREADS * ROUNDS) as u64);
}

#[test]
fn a_waiter_gets_the_released_slot() {
    let gate = Arc::new(Gate::new(1).expect("valid limit"));
    assert!(gate.try_acquire().is_some());
    let waiter = {
        let gate = gate.clone();
        thread::spawn(move || {
            let deadline = deadline_after(Instant::now(), Some(Duration::from_secs(5)));
            loop {
                if let Some(done) = slice(&gate, deadline) {
                    return done;
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(20));
    gate.release(Ticket::default());
    assert!(waiter.join().expect("waiter thread"));
    assert_eq!(gate.in_flight(), 1);
}

#[test]
fn a_wait_times_out() {
    let gate = Gate::new(1).expect("valid limit");
    assert!(gate.try_acquire().is_some());
    let started = Instant::now();
    let deadline = deadline_after(started, Some(Duration::from_millis(30)));
    let outcome = loop {
        if let Some(done) = slice(&gate, deadline) {
            break done;
        }
    };
    assert!(!outcome);
    assert!(started.elapsed() >= Duration::from_millis(30));
}

#[test]
fn a_timeout_too_long_to_represent_never_expires() {
    let now = Instant::now();
    for seconds in [1e19, 1.8e19, 1e20, 1e300, f64::MAX] {
        let timeout = extract_timeout(Some(seconds)).expect("a finite timeout is accepted");
        assert_eq!(deadline_after(now, timeout), None, "{seconds}");
    }
    assert_eq!(
        deadline_after(now, Some(Duration::MAX)),
        None,
        "a Duration past the clock's last instant"
    );
    let ordinary = extract_timeout(Some(2.5)).expect("valid timeout");
    assert_eq!(
        deadline_after(now, ordinary),
        Some(now + Duration::from_millis(2500))
    );
    assert_eq!(deadline_after(now, None), None);
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let err = extract_timeout(Some(bad)).expect_err("refused");
        assert!(err.to_string().starts_with("timeout: "), "{err}");
    }
}

#[test]
fn a_wait_without_a_deadline_still_gets_the_released_slot() {
    let gate = Arc::new(Gate::new(1).expect("valid limit"));
    assert!(gate.try_acquire().is_some());
    let timeout = extract_timeout(Some(1e19)).expect("valid timeout");
    let deadline = deadline_after(Instant::now(), timeout);
    let waiter = {
        let gate = gate.clone();
        thread::spawn(move || loop {
            if let Some(done) = slice(&gate, deadline) {
                return done;
            }
        })
    };
    thread::sleep(Duration::from_millis(20));
    gate.release(Ticket::default());
    assert!(waiter.join().expect("waiter thread"));
}

/// One slice of waiting: `Some(admitted)` when it ended, `None` to wait again.
fn slice(gate: &Gate, deadline: Option<Instant>) -> Option<bool> {
    match gate.wait_slice(deadline) {
        Wait::Admitted(_) => Some(true),
        Wait::TimedOut => Some(false),
        Wait::Again => None,
    }
}

#[test]
fn shares_cap_a_level_below_the_limit() {
    let gate = Gate::new(10).expect("valid limit");
    // Half of 10: five sheddable requests, then none.
    for _ in 0..5 {
        assert!(gate.try_acquire_share(500).is_some());
    }
    assert!(gate.try_acquire_share(500).is_none());
    // 90 %: four more default ones.
    for _ in 0..4 {
        assert!(gate.try_acquire_share(900).is_some());
    }
    assert!(gate.try_acquire_share(900).is_none());
    // The last slot is a critical request's.
    assert!(gate.try_acquire().is_some());
    assert!(gate.try_acquire().is_none());
    assert_eq!(gate.rejected(), 3);
    // A share never rounds down to nothing.
    let small = Gate::new(1).expect("valid limit");
    assert!(small.try_acquire_share(1).is_some());
}

#[test]
fn an_adaptive_gate_sets_its_limit_from_its_samples() {
    use super::adaptive::LimiterConfig;
    let gate = Arc::new(
        Gate::adaptive(LimiterConfig {
            initial_limit: 50,
            ..LimiterConfig::default()
        })
        .expect("valid config"),
    );
    assert!(gate.is_adaptive());
    // Gradient2 starts with a probe: the limit is held at 2.
    assert_eq!(gate.limit(), 2);
    // Four threads serve requests of about 2 ms for a while: the probe ends and the limit
    // is set by the limiter, always within its bounds.
    let stop = Instant::now() + Duration::from_millis(1500);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let gate = gate.clone();
            thread::spawn(move || {
                let mut served = 0u32;
                while Instant::now() < stop {
                    if let Some(ticket) = gate.try_acquire() {
                        thread::sleep(Duration::from_millis(2));
                        gate.release(ticket);
                        served += 1;
                    } else {
                        thread::sleep(Duration::from_micros(200));
                    }
                }
                served
            })
        })
        .collect();
    let served: u32 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    assert!(served > 100, "{served}");
    assert_eq!(gate.in_flight(), 0);
    let probing = gate.with_limiter(|l| l.probing()).expect("adaptive");
    let baseline = gate.with_limiter(|l| l.baseline()).expect("adaptive");
    assert!(!probing, "the first probe ended");
    let baseline = baseline.expect("a baseline was measured");
    assert!((0.0015..0.05).contains(&baseline), "{baseline}");
    assert!((1..=1000).contains(&gate.limit()));
    assert!(gate.with_limiter(|l| l.limit()) == Some(gate.limit()));
}
