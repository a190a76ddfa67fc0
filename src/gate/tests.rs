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
    assert!(gate.try_acquire());
    assert!(gate.try_acquire());
    assert!(!gate.try_acquire());
    assert_eq!(
        (gate.admitted(), gate.rejected(), gate.in_flight()),
        (2, 1, 2)
    );
    gate.release();
    assert!(gate.try_acquire());
    assert_eq!(gate.peak(), 2);
}

#[test]
fn lowering_the_limit_stops_admissions_until_enough_come_back() {
    let gate = Gate::new(3).expect("valid limit");
    for _ in 0..3 {
        assert!(gate.try_acquire());
    }
    gate.set_limit(1).expect("valid limit");
    gate.release();
    assert!(!gate.try_acquire(), "2 in flight, limit 1");
    gate.release();
    gate.release();
    assert!(gate.try_acquire());
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
                    if gate.try_acquire() {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        worst.fetch_max(now, Ordering::SeqCst);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        gate.release();
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
    assert!(gate.try_acquire());
    let waiter = {
        let gate = gate.clone();
        thread::spawn(move || {
            let deadline = deadline_after(Instant::now(), Some(Duration::from_secs(5)));
            loop {
                if let Some(done) = gate.wait_slice(deadline) {
                    return done;
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(20));
    gate.release();
    assert!(waiter.join().expect("waiter thread"));
    assert_eq!(gate.in_flight(), 1);
}

#[test]
fn a_wait_times_out() {
    let gate = Gate::new(1).expect("valid limit");
    assert!(gate.try_acquire());
    let started = Instant::now();
    let deadline = deadline_after(started, Some(Duration::from_millis(30)));
    let outcome = loop {
        if let Some(done) = gate.wait_slice(deadline) {
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
    assert!(gate.try_acquire());
    let timeout = extract_timeout(Some(1e19)).expect("valid timeout");
    let deadline = deadline_after(Instant::now(), timeout);
    let waiter = {
        let gate = gate.clone();
        thread::spawn(move || loop {
            if let Some(done) = gate.wait_slice(deadline) {
                return done;
            }
        })
    };
    thread::sleep(Duration::from_millis(20));
    gate.release();
    assert!(waiter.join().expect("waiter thread"));
}
