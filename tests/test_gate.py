"""CapacityGate and Permit as Python code sees them."""

from __future__ import annotations

import gc
import signal
import threading
import time

import pytest
from conftest import hammer

from tidegate import CapacityGate, Permit


def test_admits_up_to_the_limit_and_counts() -> None:
    gate = CapacityGate(2)
    first, second = gate.try_acquire(), gate.try_acquire()
    assert isinstance(first, Permit) and isinstance(second, Permit)
    assert gate.try_acquire() is None
    assert (gate.in_flight, gate.admitted, gate.rejected, gate.peak) == (2, 2, 1, 2)
    first.release()
    assert gate.in_flight == 1


def test_release_is_idempotent() -> None:
    gate = CapacityGate(1)
    permit = gate.try_acquire()
    assert permit is not None and not permit.released
    permit.release()
    permit.release()
    assert permit.released
    assert gate.in_flight == 0
    # A second release must not have freed a slot someone else holds.
    other = gate.try_acquire()
    assert other is not None
    permit.release()
    assert gate.in_flight == 1
    assert gate.try_acquire() is None


def test_context_manager_releases_even_on_error() -> None:
    gate = CapacityGate(1)
    with pytest.raises(RuntimeError), gate.try_acquire() as permit:  # type: ignore[union-attr]
        assert gate.in_flight == 1
        raise RuntimeError("boom")
    assert permit.released
    assert gate.in_flight == 0


def test_a_dropped_permit_is_released() -> None:
    gate = CapacityGate(1)
    permit = gate.try_acquire()
    assert gate.in_flight == 1
    del permit
    gc.collect()
    assert gate.in_flight == 0
    assert gate.try_acquire() is not None


def test_limit_is_settable_and_validated() -> None:
    gate = CapacityGate(1)
    gate.limit = 3
    assert gate.limit == 3
    held = [gate.try_acquire() for _ in range(3)]
    assert all(held)
    gate.limit = 1
    for permit in held[:2]:
        permit.release()  # type: ignore[union-attr]
    assert gate.try_acquire() is None, "one still in flight at limit 1"
    with pytest.raises(ValueError, match="limit"):
        gate.limit = 0
    assert gate.limit == 1


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (0, ValueError),
        (-5, ValueError),
        (1.5, TypeError),
        ("3", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_limit_names_the_parameter(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="limit") as info:
        CapacityGate(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value) or type(bad).__name__ in str(info.value)


def test_acquire_waits_for_a_release() -> None:
    gate = CapacityGate(1)
    held = gate.try_acquire()
    assert held is not None
    got: list[Permit | None] = []
    waiting = threading.Thread(target=lambda: got.append(gate.acquire(timeout=5)))
    waiting.start()
    held.release()
    waiting.join()
    assert got and got[0] is not None
    assert gate.in_flight == 1


def test_acquire_times_out_and_counts_one_rejection() -> None:
    gate = CapacityGate(1)
    held = gate.try_acquire()
    assert gate.acquire(timeout=0.05) is None
    assert gate.rejected == 1
    assert held is not None


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_timeout_names_the_parameter(bad: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        CapacityGate(1).acquire(timeout=bad)


@pytest.mark.parametrize("huge", [1e19, 1e20, 1e300, float(2**63)])
def test_a_timeout_too_long_to_represent_means_no_limit(huge: float) -> None:
    gate = CapacityGate(1)
    first = gate.acquire(timeout=huge)
    assert first is not None, "a free slot is taken at once"
    got: list[Permit | None] = []
    waiting = threading.Thread(target=lambda: got.append(gate.acquire(timeout=huge)))
    waiting.start()
    # The waiter is still waiting after longer than any slice of its wait.
    waiting.join(timeout=0.3)
    assert waiting.is_alive() and got == []
    first.release()
    waiting.join(timeout=10)
    assert not waiting.is_alive()
    assert got and got[0] is not None
    assert (gate.in_flight, gate.admitted, gate.rejected) == (1, 2, 0)


class _Alarm(Exception):
    pass


def _raise_alarm(signum: int, frame: object) -> None:
    raise _Alarm


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_a_wait_with_a_huge_timeout_is_still_interrupted_by_a_signal() -> None:
    gate = CapacityGate(1)
    held = gate.try_acquire()
    assert held is not None
    previous = signal.signal(signal.SIGALRM, _raise_alarm)
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(_Alarm):
            gate.acquire(timeout=1e19)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 5
    assert gate.rejected == 1
    assert gate.in_flight == 1


def test_many_threads_never_exceed_the_limit() -> None:
    threads, rounds, limit = 32, 2_000, 4
    gate = CapacityGate(limit)
    inside = 0
    worst = 0
    lock = threading.Lock()

    def once(thread: int, turn: int) -> None:
        nonlocal inside, worst
        permit = gate.try_acquire()
        if permit is None:
            return
        with lock:
            inside += 1
            worst = max(worst, inside)
        with lock:
            inside -= 1
        permit.release()

    hammer(once, threads=threads, times=rounds)
    assert worst <= limit
    assert gate.peak <= limit
    assert gate.admitted + gate.rejected == threads * rounds
    assert gate.in_flight == 0


def test_blocking_acquire_under_contention_admits_everyone_eventually() -> None:
    threads, rounds = 32, 200
    gate = CapacityGate(3)
    failures: list[str] = []

    def once(thread: int, turn: int) -> None:
        permit = gate.acquire(timeout=10)
        assert permit is not None, "timed out"
        if gate.in_flight > gate.limit:
            failures.append(f"in_flight {gate.in_flight}")
        permit.release()

    hammer(once, threads=threads, times=rounds)
    assert failures == []
    assert gate.admitted == threads * rounds
    assert gate.in_flight == 0
    assert gate.peak <= 3
