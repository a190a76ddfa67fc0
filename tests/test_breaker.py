"""CircuitBreaker and CircuitOpenError as Python code sees them."""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from conftest import hammer

import tidegate
from tidegate import CircuitBreaker, CircuitOpenError
from tidegate import _tidegate as native

THREADS = 32


class FakeClock:
    """A monotonic clock the test moves by hand; safe to read from many threads."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Interrupt(BaseException):
    """Stands in for KeyboardInterrupt and friends without upsetting the test runner."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fail(message: str = "down") -> None:
    raise ConnectionError(message)


def ok(value: int = 1) -> int:
    return value


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Starts `target` in a thread; the list receives its result or exception."""
    box: list[Any] = []

    def runner() -> None:
        try:
            box.append(target())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=runner)
    thread.start()
    return thread, box


# --- transitions -------------------------------------------------------------------------------


def test_opens_after_consecutive_failures_then_probes_and_closes(clock: FakeClock) -> None:
    breaker = CircuitBreaker("db", failure_threshold=3, reset_timeout=10.0, clock=clock)
    assert breaker.state == "closed"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    assert breaker.failure_count == 2
    assert breaker.call(ok, 7) == 7
    assert breaker.failure_count == 0, "a success resets the consecutive count"
    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    assert breaker.state == "open"
    assert breaker.retry_after == 10.0

    ran: list[int] = []
    clock.advance(4.0)
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(ran.append, 1)
    assert ran == [], "an open breaker never runs the call"
    assert refused.value.retry_after == pytest.approx(6.0)
    assert breaker.rejected == 1

    clock.advance(6.0)
    assert breaker.retry_after == 0.0
    assert breaker.state == "half_open", "the timeout is checked when someone looks"
    assert breaker.call(ok, 2) == 2
    assert breaker.state == "closed"
    assert (breaker.total_failures, breaker.total_successes) == (5, 2)


def test_a_failed_probe_reopens_and_backoff_is_capped(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "api",
        failure_threshold=1,
        reset_timeout=5.0,
        max_reset_timeout=18.0,
        backoff=2.0,
        clock=clock,
    )
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    open_times = [breaker.retry_after]
    for _ in range(4):
        clock.advance(breaker.retry_after - 0.001)
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
        clock.advance(0.001)
        with pytest.raises(ConnectionError):
            breaker.call(fail)
        assert breaker.state == "open"
        open_times.append(breaker.retry_after)
    assert open_times == [5.0, 10.0, 18.0, 18.0, 18.0]
    clock.advance(18.0)
    breaker.call(ok)
    assert breaker.state == "closed"
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert breaker.retry_after == 5.0, "closing starts the backoff over"


def test_without_a_cap_every_trip_waits_reset_timeout(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=5.0, clock=clock)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
        assert breaker.retry_after == 5.0
        clock.advance(5.0)


def test_success_threshold_needs_that_many_probe_successes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "db", failure_threshold=1, reset_timeout=1.0, success_threshold=3, clock=clock
    )
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(1.0)
    breaker.call(ok)
    breaker.call(ok)
    assert breaker.state == "half_open"
    breaker.call(ok)
    assert breaker.state == "closed"


def test_failure_rate_over_the_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "search",
        failure_threshold=100,
        failure_rate=0.5,
        window=10.0,
        minimum_calls=6,
        clock=clock,
    )
    # Old failures that slide out of the window before the rate is judged.
    for _ in range(4):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    clock.advance(11.0)
    outcomes: list[Callable[[], object]] = [ok, fail, ok, fail, ok]
    for outcome in outcomes:
        with contextlib.suppress(ConnectionError):
            breaker.call(outcome)
    assert breaker.state == "closed", "2 of 5 recent calls: below the minimum and the rate"
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert breaker.state == "open", "3 of 6 recent calls failed"


def test_manual_open_close_and_reset(clock: FakeClock) -> None:
    breaker = CircuitBreaker("db", failure_threshold=3, reset_timeout=8.0, clock=clock)
    seen: list[tuple[str, str]] = []
    breaker.add_listener(lambda _b, old, new: seen.append((old, new)))
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    breaker.open()
    assert breaker.state == "open"
    assert breaker.retry_after == 8.0
    clock.advance(3.0)
    breaker.open()
    assert breaker.retry_after == 8.0, "opening an open breaker restarts its timer"
    breaker.close()
    assert (breaker.state, breaker.failure_count) == ("closed", 0)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    breaker.reset()
    assert breaker.failure_count == 0
    assert seen == [("closed", "open"), ("open", "closed")]


def test_repr_and_configuration_read_back(clock: FakeClock) -> None:
    def fallback() -> str:
        return "cached"

    breaker = CircuitBreaker(
        "payments",
        failure_threshold=2,
        reset_timeout=3.5,
        half_open_max_calls=4,
        probe_timeout=12.5,
        success_threshold=2,
        failure_rate=0.25,
        window=30.0,
        minimum_calls=20,
        max_reset_timeout=60.0,
        backoff=1.5,
        exclude=KeyError,
        fallback=fallback,
        clock=clock,
    )
    assert breaker.name == "payments"
    assert (breaker.failure_threshold, breaker.reset_timeout) == (2, 3.5)
    assert (breaker.half_open_max_calls, breaker.success_threshold) == (4, 2)
    assert breaker.probe_timeout == 12.5
    assert CircuitBreaker("x").probe_timeout == 30.0
    assert CircuitBreaker("x", reset_timeout=90).probe_timeout == 90.0
    assert (breaker.failure_rate, breaker.window, breaker.minimum_calls) == (0.25, 30.0, 20)
    assert (breaker.max_reset_timeout, breaker.backoff) == (60.0, 1.5)
    assert breaker.exclude == (KeyError,)
    assert breaker.fallback is fallback
    assert CircuitBreaker("x").exclude == ()
    assert repr(breaker) == (
        "CircuitBreaker(name='payments', state='closed', failure_count=0, failure_threshold=2)"
    )
    breaker.open()
    clock.advance(3.5)
    assert "state='half_open'" in repr(breaker)


# --- generations -------------------------------------------------------------------------------


def test_a_slow_call_from_before_the_trip_cannot_fail_the_probe(clock: FakeClock) -> None:
    breaker = CircuitBreaker("db", failure_threshold=2, reset_timeout=5.0, clock=clock)
    slow_started, slow_go = threading.Event(), threading.Event()
    probe_started, probe_go = threading.Event(), threading.Event()

    def slow() -> None:
        slow_started.set()
        assert slow_go.wait(10)
        raise ConnectionError("late")

    def probe() -> str:
        probe_started.set()
        assert probe_go.wait(10)
        return "fine"

    slow_thread, slow_box = run_in_thread(lambda: breaker.call(slow))
    assert slow_started.wait(10)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    clock.advance(5.0)
    probe_thread, probe_box = run_in_thread(lambda: breaker.call(probe))
    assert probe_started.wait(10)

    slow_go.set()
    slow_thread.join(10)
    assert isinstance(slow_box[0], ConnectionError)
    assert breaker.state == "half_open", "the late failure belongs to an earlier generation"
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)  # the probe slot is still the probe's

    probe_go.set()
    probe_thread.join(10)
    assert probe_box == ["fine"]
    assert breaker.state == "closed"
    assert breaker.total_failures == 3


# --- concurrency -------------------------------------------------------------------------------


def _race_for_probe_slots(breaker: CircuitBreaker, slots: int) -> None:
    """THREADS threads race into a half-open breaker; the admitted ones wait inside."""
    release = threading.Event()
    decided = threading.Condition()
    counts = {"inside": 0, "refused": 0}

    def probe() -> None:
        with decided:
            counts["inside"] += 1
            decided.notify_all()
        assert release.wait(10)

    def racer(thread: int, turn: int) -> None:
        try:
            breaker.call(probe)
        except CircuitOpenError as exc:
            assert exc.retry_after == 0.0
            with decided:
                counts["refused"] += 1
                decided.notify_all()

    def all_decided() -> None:
        try:
            with decided:
                assert decided.wait_for(lambda: counts["inside"] + counts["refused"] >= THREADS, 10)
                assert counts["inside"] == slots
                assert counts["refused"] == THREADS - slots
        finally:
            release.set()

    hammer(racer, threads=THREADS, times=1, during=all_decided)


def test_racing_threads_get_exactly_the_probe_slots(clock: FakeClock) -> None:
    slots, rounds = 3, 25
    breaker = CircuitBreaker(
        "race",
        failure_threshold=1,
        reset_timeout=1.0,
        half_open_max_calls=slots,
        success_threshold=slots,
        clock=clock,
    )
    for _ in range(rounds):
        breaker.open()
        clock.advance(1.0)
        _race_for_probe_slots(breaker, slots)
        assert breaker.state == "closed"
    assert breaker.rejected == rounds * (THREADS - slots)
    assert breaker.total_successes == rounds * slots


def _invoke(form: str, breaker: CircuitBreaker, func: Callable[..., Any], *args: Any) -> Any:
    if form == "call":
        return breaker.call(func, *args)
    if form == "decorator":
        return breaker(func)(*args)
    with breaker:
        return func(*args)


FORMS = ["call", "decorator", "with"]


@pytest.mark.parametrize("form", FORMS)
def test_calls_through_one_breaker_overlap_in_time(form: str) -> None:
    breaker = CircuitBreaker("overlap")
    # Every call waits until all of them are inside at once: a breaker that serialised its
    # calls would break the barrier.
    all_inside = threading.Barrier(THREADS, timeout=20)

    def work() -> int:
        return all_inside.wait()

    results = hammer(
        lambda thread, turn: _invoke(form, breaker, work), threads=THREADS, times=1
    ).results
    assert sorted(results) == list(range(THREADS))
    assert breaker.total_successes == THREADS


@pytest.mark.parametrize("form", FORMS)
def test_the_three_forms_behave_the_same(form: str, clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "same", failure_threshold=2, reset_timeout=10.0, exclude=KeyError, clock=clock
    )

    def missing() -> None:
        raise KeyError("nope")

    steps: list[tuple[Callable[..., Any], float]] = [
        (ok, 0),
        (fail, 0),
        (missing, 0),
        (ok, 0),
        (fail, 0),
        (fail, 0),
        (ok, 0),
        (fail, 10),
        (ok, 0),
        (ok, 10),
        (fail, 0),
    ]
    observed = []
    for func, wait in steps:
        clock.advance(wait)
        try:
            outcome: Any = _invoke(form, breaker, func)
        except (ConnectionError, KeyError, CircuitOpenError) as exc:
            outcome = type(exc).__name__
        observed.append((outcome, breaker.state, breaker.failure_count))
    assert observed == [
        (1, "closed", 0),
        ("ConnectionError", "closed", 1),
        ("KeyError", "closed", 1),
        (1, "closed", 0),
        ("ConnectionError", "closed", 1),
        ("ConnectionError", "open", 2),
        ("CircuitOpenError", "open", 2),
        ("ConnectionError", "open", 3),
        ("CircuitOpenError", "open", 3),
        (1, "closed", 0),
        ("ConnectionError", "closed", 1),
    ]
    assert (breaker.total_successes, breaker.total_failures, breaker.rejected) == (3, 5, 2)


def test_with_form_settles_each_threads_own_admission(clock: FakeClock) -> None:
    breaker = CircuitBreaker("cm", failure_threshold=1, reset_timeout=5.0, clock=clock)
    entered_closed, leave_closed = threading.Event(), threading.Event()
    entered_probe, leave_probe = threading.Event(), threading.Event()

    def admitted_while_closed() -> None:
        with breaker:
            entered_closed.set()
            assert leave_closed.wait(10)
            raise ConnectionError("late")

    def probe() -> str:
        with breaker:
            entered_probe.set()
            assert leave_probe.wait(10)
        return "probed"

    closed_thread, closed_box = run_in_thread(admitted_while_closed)
    assert entered_closed.wait(10)
    breaker.open()
    clock.advance(5.0)
    probe_thread, probe_box = run_in_thread(probe)
    assert entered_probe.wait(10)
    # The probe was entered last; if this exit took the probe's admission, its failure
    # would reopen the breaker.
    leave_closed.set()
    closed_thread.join(10)
    assert isinstance(closed_box[0], ConnectionError)
    assert breaker.state == "half_open"
    leave_probe.set()
    probe_thread.join(10)
    assert probe_box == ["probed"]
    assert breaker.state == "closed"


def test_with_form_accounting_under_many_threads() -> None:
    breaker = CircuitBreaker("cm", failure_threshold=10**9, exclude=LookupError)
    iterations = 150
    rngs = [random.Random(seed) for seed in range(THREADS)]

    def once(thread: int, turn: int) -> str:
        kind = rngs[thread].choice(["ok", "failed", "excluded"])
        try:
            with breaker, breaker:  # nested on purpose: each exit settles its own entry
                if kind == "failed":
                    raise ConnectionError
                if kind == "excluded":
                    raise LookupError
        except (ConnectionError, LookupError):
            pass
        return kind

    run = hammer(once, threads=THREADS, times=iterations)
    assert run.calls == [iterations] * THREADS
    tally = Counter(run.results)
    assert breaker.total_successes == 2 * tally["ok"]
    assert breaker.total_failures == 2 * tally["failed"]
    assert breaker.rejected == 0


def test_a_storm_of_mixed_outcomes_leaks_no_probe_slot() -> None:
    ticks = FakeClock(0.0)
    breaker = CircuitBreaker(
        "storm",
        failure_threshold=2,
        reset_timeout=0.05,
        half_open_max_calls=2,
        exclude=LookupError,
        clock=ticks,
    )
    iterations = 200
    rngs = [random.Random(seed) for seed in range(THREADS)]

    def once(thread: int, turn: int) -> str:
        rng = rngs[thread]
        ticks.advance(0.01)
        kind = rng.choice(["ok", "ok", "failed", "excluded", "interrupted"])

        def body() -> None:
            if kind == "failed":
                raise ConnectionError
            if kind == "excluded":
                raise LookupError
            if kind == "interrupted":
                raise Interrupt

        try:
            if rng.random() < 0.5:
                breaker.call(body)
            else:
                with breaker:
                    body()
        except CircuitOpenError:
            return "refused"
        except ConnectionError:
            return "failed"
        except (LookupError, Interrupt):
            return "ignored"
        return "ok"

    run = hammer(once, threads=THREADS, times=iterations)
    assert run.calls == [iterations] * THREADS
    total = Counter(run.results)
    assert sum(total.values()) == THREADS * iterations
    assert breaker.total_successes == total["ok"]
    assert breaker.total_failures == total["failed"]
    assert breaker.rejected == total["refused"]
    assert total["refused"] > 0, "the storm should have opened the breaker"
    # Nothing is in flight: once the open time passes, a probe must get through.
    ticks.advance(1.0)
    breaker.call(ok)
    assert breaker.state == "closed"


# --- excluded exceptions and interruptions ------------------------------------------------------


def test_excluded_exceptions_propagate_but_do_not_count(clock: FakeClock) -> None:
    class NotFound(Exception):
        pass

    class GoneForGood(NotFound):
        pass

    breaker = CircuitBreaker(
        "api", failure_threshold=2, exclude=(NotFound, ValueError), clock=clock
    )
    for exc in [NotFound(), GoneForGood(), ValueError(), NotFound()]:

        def raise_it(exc: Exception = exc) -> None:
            raise exc

        with pytest.raises(type(exc)):
            breaker.call(raise_it)
    assert breaker.state == "closed"
    assert (breaker.failure_count, breaker.total_failures, breaker.total_successes) == (0, 0, 0)
    with pytest.raises(ConnectionError):
        breaker.call(fail)

    def not_found() -> None:
        raise NotFound

    with pytest.raises(NotFound):
        breaker.call(not_found)
    assert breaker.failure_count == 1, "an excluded error does not reset the count either"
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert breaker.state == "open"


@pytest.mark.parametrize("exc_type", [Interrupt, KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exceptions_do_not_count_and_free_the_probe_slot(
    exc_type: type[BaseException], clock: FakeClock
) -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=1.0, exclude=(), clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(1.0)

    def interrupted() -> None:
        raise exc_type

    with pytest.raises(exc_type):
        breaker.call(interrupted)
    assert breaker.state == "half_open"
    with pytest.raises(exc_type), breaker:
        raise exc_type
    assert breaker.state == "half_open"
    assert breaker.total_failures == 1
    assert breaker.call(ok, 3) == 3, "the probe slot came back"
    assert breaker.state == "closed"


def test_an_excluded_probe_frees_its_slot(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "db", failure_threshold=1, reset_timeout=1.0, exclude=KeyError, clock=clock
    )
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(1.0)
    with pytest.raises(KeyError), breaker:
        raise KeyError("x")
    assert breaker.state == "half_open"
    breaker.call(ok)
    assert breaker.state == "closed"


# --- probes that never come back ---------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_a_hung_probe_gives_its_slot_back_after_probe_timeout(form: str, clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "db", failure_threshold=1, reset_timeout=1.0, probe_timeout=5.0, clock=clock
    )
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(1.0)
    entered, release = threading.Event(), threading.Event()

    def hangs() -> None:
        entered.set()
        release.wait(timeout=60)
        raise ConnectionError("answered at last")

    thread, box = run_in_thread(lambda: _invoke(form, breaker, hangs))
    try:
        assert entered.wait(timeout=10)
        assert breaker.state == "half_open"
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
        clock.advance(4.9)
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
        clock.advance(0.1)
        assert breaker.call(ok, 7) == 7, "the slot is free again after probe_timeout"
        assert breaker.state == "closed"
    finally:
        release.set()
        thread.join(timeout=10)
    assert isinstance(box[0], ConnectionError), "the late probe's own error still reaches it"
    # Its failure is counted but cannot reopen a breaker that moved on without it.
    assert (breaker.state, breaker.failure_count) == ("closed", 0)
    assert (breaker.total_failures, breaker.total_successes) == (2, 1)


def test_a_probe_answering_after_its_bound_cannot_close_the_breaker(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "db", failure_threshold=1, reset_timeout=1.0, probe_timeout=5.0, clock=clock
    )
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(1.0)

    def slow() -> str:
        clock.advance(5.0)
        return "late"

    assert breaker.call(slow) == "late"
    assert breaker.state == "half_open", "a success after the bound proves too little"
    assert breaker.total_successes == 1
    assert breaker.call(ok) == 1
    assert breaker.state == "closed"


@pytest.mark.timeout(30)
def test_a_hung_probe_frees_its_slot_on_the_real_clock() -> None:
    bound = 0.2
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=0, probe_timeout=bound)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    entered, release = threading.Event(), threading.Event()

    def hangs() -> str:
        entered.set()
        release.wait(timeout=60)
        return "late"

    thread, box = run_in_thread(lambda: breaker.call(hangs))
    try:
        assert entered.wait(timeout=10)
        started = time.monotonic()
        refused = 0
        while time.monotonic() - started < 10:
            try:
                assert breaker.call(ok) == 1
                break
            except CircuitOpenError:
                refused += 1
                time.sleep(0.01)
        waited = time.monotonic() - started
        assert breaker.state == "closed"
        assert refused > 0
        assert bound * 0.9 <= waited < 5
    finally:
        release.set()
        thread.join(timeout=10)
    assert box == ["late"]
    assert breaker.state == "closed"


# --- listeners that raise ------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_a_listener_interrupting_the_move_to_half_open_leaks_no_probe_slot(
    form: str, clock: FakeClock
) -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=1.0, clock=clock)
    ran: list[str] = []

    def interrupts(_b: CircuitBreaker, _old: str, new: str) -> None:
        if new == "half_open":
            raise Interrupt

    breaker.add_listener(interrupts)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(1.0)
    with pytest.raises(Interrupt):
        _invoke(form, breaker, lambda: ran.append("probe"))
    assert ran == [], "the interrupted call never ran"
    assert breaker.state == "half_open"
    assert breaker.call(ok, 3) == 3, "the probe slot came back"
    assert breaker.state == "closed"
    assert (breaker.total_failures, breaker.total_successes, breaker.rejected) == (1, 1, 0)


@pytest.mark.parametrize("form", FORMS)
def test_a_listener_failing_on_the_move_to_half_open_is_logged_and_the_probe_runs(
    form: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=1.0, clock=clock)

    def broken(_b: CircuitBreaker, _old: str, new: str) -> None:
        if new == "half_open":
            raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(1.0)
    with caplog.at_level(logging.ERROR, logger="tidegate"):
        assert _invoke(form, breaker, ok, 5) == 5
    assert breaker.state == "closed"
    logged = [r for r in caplog.records if r.name == "tidegate" and r.exc_info]
    assert len(logged) == 1
    assert isinstance(logged[0].exc_info and logged[0].exc_info[1], RuntimeError)


@pytest.mark.parametrize("moving_to", ["closed", "open"])
@pytest.mark.parametrize("form", FORMS)
def test_a_listener_interrupting_the_probes_outcome_leaves_the_breaker_sound(
    form: str, moving_to: str, clock: FakeClock
) -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=1.0, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(1.0)

    def interrupts(_b: CircuitBreaker, _old: str, new: str) -> None:
        if new == moving_to:
            raise Interrupt

    breaker.add_listener(interrupts)
    with pytest.raises(Interrupt):
        _invoke(form, breaker, ok if moving_to == "closed" else fail)
    breaker.remove_listener(interrupts)
    assert breaker.state == moving_to, "the probe's outcome was applied before the listener ran"
    clock.advance(1.0)
    assert breaker.call(ok) == 1, "no slot is held"
    assert breaker.state == "closed"


# --- fallback ----------------------------------------------------------------------------------


def test_fallback_answers_while_open(clock: FakeClock) -> None:
    calls: list[tuple[Any, ...]] = []

    def fallback(*args: Any, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        return "stale"

    breaker = CircuitBreaker(
        "db",
        failure_threshold=1,
        reset_timeout=5.0,
        half_open_max_calls=1,
        fallback=fallback,
        clock=clock,
    )

    def fetch(*args: Any, **kwargs: Any) -> Any:
        return "fresh"

    assert breaker.call(fetch, 5) == "fresh"
    assert calls == [], "no fallback while closed"
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    assert breaker.call(fetch, 1, func="kw") == "stale"
    assert calls == [((1,), {"func": "kw"})]

    @breaker
    def lookup(key: str) -> str:
        return key

    assert lookup("k") == "stale"
    with pytest.raises(CircuitOpenError), breaker:
        pytest.fail("the with form cannot fall back: the block must not run")
    assert breaker.rejected == 3

    # Half-open with the slot taken also falls back.
    clock.advance(5.0)
    inside, leave = threading.Event(), threading.Event()

    def slow_probe() -> str:
        inside.set()
        assert leave.wait(10)
        return "fresh"

    thread, box = run_in_thread(lambda: breaker.call(slow_probe))
    assert inside.wait(10)
    assert breaker.call(fetch) == "stale"
    leave.set()
    thread.join(10)
    assert box == ["fresh"]


def test_a_failing_fallback_propagates_and_is_not_counted(clock: FakeClock) -> None:
    def fallback() -> None:
        raise RuntimeError("no cache either")

    breaker = CircuitBreaker("db", failure_threshold=1, fallback=fallback, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    with pytest.raises(RuntimeError, match="no cache"):
        breaker.call(ok)
    assert (breaker.total_failures, breaker.rejected) == (1, 1)


# --- the decorator and the with form -----------------------------------------------------------


def test_the_decorator_keeps_metadata_and_works_on_methods() -> None:
    breaker = CircuitBreaker("db")

    @breaker
    def fetch(key: str, *, default: int = 0) -> int:
        """Fetch a key."""
        return len(key) + default

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch a key."
    assert fetch.__qualname__.endswith("fetch")
    assert fetch.__wrapped__ is not None  # type: ignore[attr-defined]
    assert fetch("abc", default=1) == 4

    class Client:
        def __init__(self) -> None:
            self.hits = 0

        @breaker
        def get(self, n: int) -> int:
            self.hits += n
            return self.hits

    client = Client()
    assert client.get(2) == 2
    assert breaker.total_successes == 2


def test_the_decorator_refuses_coroutine_functions_and_non_callables() -> None:
    breaker = CircuitBreaker("db")

    async def fetch() -> None:
        return None

    with pytest.raises(TypeError, match="func: coroutine functions are not supported"):
        breaker(fetch)
    with pytest.raises(TypeError, match="func: must be callable, got 3"):
        breaker(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="func: must be callable, got 'x'"):
        breaker.call("x")  # type: ignore[arg-type]
    assert breaker.total_failures == 0


def test_with_returns_the_breaker_and_exit_without_enter_is_an_error() -> None:
    breaker = CircuitBreaker("db")
    with breaker as entered:
        assert entered is breaker
    with pytest.raises(RuntimeError, match="without a matching __enter__"):
        breaker.__exit__(None, None, None)
    other = CircuitBreaker("other")
    with breaker, pytest.raises(RuntimeError):
        other.__exit__(None, None, None)
    assert breaker.total_successes == 2


def test_call_passes_a_keyword_named_func() -> None:
    breaker = CircuitBreaker("db")
    assert breaker.call(lambda func: func * 2, func=4) == 8


# --- CircuitOpenError --------------------------------------------------------------------------


def test_circuit_open_error_carries_the_breaker_and_retry_after(clock: FakeClock) -> None:
    assert tidegate.CircuitOpenError is native.CircuitOpenError
    assert issubclass(CircuitOpenError, Exception)
    breaker = CircuitBreaker("inventory", failure_threshold=1, reset_timeout=30.0, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(12.5)
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(ok)
    err = refused.value
    assert err.breaker is breaker
    assert isinstance(err.retry_after, float)
    assert err.retry_after == pytest.approx(17.5)
    assert "inventory" in str(err) and "open" in str(err)

    by_hand = CircuitOpenError("payments are down")
    assert by_hand.breaker is None
    assert by_hand.retry_after == 0.0


def test_a_half_open_refusal_says_retry_after_zero(clock: FakeClock) -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=1.0, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(1.0)
    with breaker, pytest.raises(CircuitOpenError) as refused:
        breaker.call(ok)
    assert refused.value.retry_after == 0.0
    assert "half-open" in str(refused.value)
    assert breaker.state == "closed"


# --- listeners and logging ---------------------------------------------------------------------


def test_listeners_see_every_transition_and_may_read_the_breaker(clock: FakeClock) -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=2.0, clock=clock)
    seen: list[tuple[Any, str, str, str, float]] = []

    def listener(b: CircuitBreaker, old: str, new: str) -> None:
        # Reading the breaker from a listener must not deadlock: no lock is held.
        seen.append((b, old, new, b.state, b.retry_after))

    assert breaker.add_listener(listener) is listener
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    clock.advance(2.0)
    breaker.call(ok)
    assert seen == [
        (breaker, "closed", "open", "open", 2.0),
        (breaker, "open", "half_open", "half_open", 0.0),
        (breaker, "half_open", "closed", "closed", 0.0),
    ]
    breaker.remove_listener(listener)
    breaker.open()
    assert len(seen) == 3
    with pytest.raises(ValueError, match="listener: not registered"):
        breaker.remove_listener(listener)
    with pytest.raises(TypeError, match="listener: must be callable, got 5"):
        breaker.add_listener(5)  # type: ignore[type-var]


def test_bound_method_listeners_can_be_removed() -> None:
    class Watcher:
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_change(self, _b: object, _old: str, new: str) -> None:
            self.events.append(new)

    watcher = Watcher()
    breaker = CircuitBreaker("db")
    breaker.add_listener(watcher.on_change)
    breaker.open()
    breaker.remove_listener(watcher.on_change)
    breaker.close()
    assert watcher.events == ["open"]


def test_a_raising_listener_is_logged_and_never_breaks_the_call(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, clock=clock)
    after: list[str] = []

    def broken(*_: object) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(lambda _b, _old, new: after.append(new))
    with caplog.at_level(logging.INFO, logger="tidegate"), pytest.raises(ConnectionError):
        breaker.call(fail)
    assert after == ["open"], "later listeners still run"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "tidegate"
    assert "'db'" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    breaker = CircuitBreaker("db", failure_threshold=2, reset_timeout=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="tidegate"):
        for _ in range(2):
            with pytest.raises(ConnectionError):
                breaker.call(fail)
        clock.advance(30.0)
        breaker.call(ok)
    assert {r.name for r in caplog.records} == {"tidegate"}
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "circuit breaker 'db': closed -> open (2 consecutive failures), next probe in 30s",
        ),
        (logging.INFO, "circuit breaker 'db': open -> half_open (reset timeout elapsed)"),
        (logging.INFO, "circuit breaker 'db': half_open -> closed (a probe call succeeded)"),
    ]


@pytest.mark.parametrize(
    ("options", "failures", "reason"),
    [
        ({"failure_threshold": 1}, 1, "1 failure"),
        ({"failure_threshold": 3}, 3, "3 consecutive failures"),
        ({"failure_rate": 0.5, "minimum_calls": 1}, 1, "the only call in the window failed"),
        ({"failure_rate": 0.5, "minimum_calls": 2}, 2, "2 of the last 2 calls failed"),
    ],
)
def test_the_opening_reason_reads_right_in_the_singular_too(
    caplog: pytest.LogCaptureFixture,
    clock: FakeClock,
    options: dict[str, Any],
    failures: int,
    reason: str,
) -> None:
    breaker = CircuitBreaker("db", reset_timeout=30.0, clock=clock, **options)
    with caplog.at_level(logging.WARNING, logger="tidegate"):
        for _ in range(failures):
            with pytest.raises(ConnectionError):
                breaker.call(fail)
    assert breaker.state == "open"
    assert [r.getMessage() for r in caplog.records] == [
        f"circuit breaker 'db': closed -> open ({reason}), next probe in 30s"
    ]


def test_the_core_announces_each_transition_once_and_nothing_else(clock: FakeClock) -> None:
    announced: list[tuple[str, str, str]] = []

    class Recording(CircuitBreaker):
        __slots__ = ()

        def _announce(self, old: str, new: str, why: str, /) -> None:
            announced.append((old, new, why))

    breaker = Recording("db", failure_threshold=2, reset_timeout=5.0, clock=clock)
    for _ in range(20):
        assert breaker.call(ok) == 1
        with breaker:
            pass
    assert breaker.state == "closed"
    assert announced == [], "calls that change nothing announce nothing"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    clock.advance(5.0)
    with breaker:
        pass
    breaker.open()
    breaker.close()
    assert announced == [
        ("closed", "open", "closed -> open (2 consecutive failures), next probe in 5s"),
        ("open", "half_open", "open -> half_open (reset timeout elapsed)"),
        ("half_open", "closed", "half_open -> closed (a probe call succeeded)"),
        ("closed", "open", "closed -> open (set by hand), next probe in 5s"),
        ("open", "closed", "open -> closed (set by hand)"),
    ]


def test_a_breaker_in_a_reference_cycle_is_collected() -> None:
    class Owner:
        def __init__(self) -> None:
            self.breaker = CircuitBreaker("db")
            self.breaker.add_listener(self.on_change)

        def on_change(self, *_: object) -> None:
            pass

    owner = Owner()
    owner_ref, breaker_ref = weakref.ref(owner), weakref.ref(owner.breaker)
    del owner
    gc.collect()
    assert owner_ref() is None
    assert breaker_ref() is None


# --- the clock and bad arguments ---------------------------------------------------------------


def test_a_bad_clock_reading_fails_before_the_call_runs() -> None:
    readings: list[Any] = ["soon"]
    breaker = CircuitBreaker("db", clock=lambda: readings[0])
    ran: list[int] = []
    with pytest.raises(TypeError, match="clock: must return a number of seconds, got 'soon'"):
        breaker.call(ran.append, 1)
    readings[0] = float("nan")
    with pytest.raises(ValueError, match="clock: must return a finite number"):
        breaker.call(ran.append, 1)
    assert ran == []
    readings[0] = 3
    assert breaker.call(ok) == 1


def test_a_clock_failing_after_the_call_keeps_the_calls_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = iter([1.0])

    def clock() -> float:
        try:
            return next(readings)
        except StopIteration:
            raise RuntimeError("clock broke") from None

    breaker = CircuitBreaker("db", clock=clock)
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    assert breaker.call(ok, 4) == 4
    assert breaker.total_successes == 1
    assert [type(r.exc_value) for r in reported] == [RuntimeError]


BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"failure_threshold": 0}, ValueError, "failure_threshold: must be an integer >= 1, got 0"),
    ({"failure_threshold": -3}, ValueError, "failure_threshold: must be an integer >= 1, got -3"),
    ({"failure_threshold": 2.5}, TypeError, "failure_threshold: must be an int, got float"),
    ({"failure_threshold": True}, TypeError, "failure_threshold: must be an int, got True"),
    ({"failure_threshold": None}, TypeError, "failure_threshold: must be an int, got NoneType"),
    ({"failure_threshold": 2**40}, ValueError, "failure_threshold: is too large"),
    ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls: must be an integer >= 1"),
    ({"success_threshold": 0}, ValueError, "success_threshold: must be an integer >= 1"),
    ({"minimum_calls": 0}, ValueError, "minimum_calls: must be an integer >= 1"),
    ({"reset_timeout": -1}, ValueError, "reset_timeout: must be a finite number of seconds >= 0"),
    ({"reset_timeout": float("nan")}, ValueError, "reset_timeout: must be a finite number"),
    ({"reset_timeout": float("inf")}, ValueError, "reset_timeout: must be a finite number"),
    ({"reset_timeout": "30"}, TypeError, "reset_timeout: must be a number, got '30'"),
    ({"reset_timeout": None}, TypeError, "reset_timeout: must be a number, got NoneType"),
    ({"window": 0}, ValueError, "window: must be a finite number of seconds > 0, got 0"),
    ({"probe_timeout": 0}, ValueError, "probe_timeout: must be a finite number of seconds > 0"),
    ({"probe_timeout": -1}, ValueError, "probe_timeout: must be a finite number of seconds > 0"),
    ({"probe_timeout": float("nan")}, ValueError, "probe_timeout: must be a finite number"),
    ({"probe_timeout": float("inf")}, ValueError, "probe_timeout: must be a finite number"),
    ({"probe_timeout": 10**400}, ValueError, "probe_timeout: must be a finite number, got 1000"),
    ({"probe_timeout": "5"}, TypeError, "probe_timeout: must be a number, got '5'"),
    ({"probe_timeout": True}, TypeError, "probe_timeout: must be a number, got True"),
    ({"failure_threshold": 10**40}, ValueError, "failure_threshold: is too large: 1" + "0" * 40),
    ({"minimum_calls": -(10**40)}, ValueError, "minimum_calls: must be an integer >= 1, got -1"),
    ({"failure_rate": 0}, ValueError, "failure_rate: must be in (0, 1], got 0"),
    ({"failure_rate": 1.01}, ValueError, "failure_rate: must be in (0, 1], got 1.01"),
    ({"failure_rate": float("nan")}, ValueError, "failure_rate: must be in (0, 1]"),
    ({"failure_rate": "half"}, TypeError, "failure_rate: must be a number, got 'half'"),
    ({"max_reset_timeout": 10}, ValueError, "max_reset_timeout: must be a finite number of"),
    ({"backoff": 0.5}, ValueError, "backoff: must be a finite number >= 1, got 0.5"),
    ({"exclude": ValueError()}, TypeError, "exclude: must be an exception type or a tuple"),
    ({"exclude": int}, TypeError, "exclude: <class 'int'> is not an exception type"),
    ({"exclude": (KeyError, "x")}, TypeError, "exclude: 'x' is not an exception type"),
    ({"exclude": "KeyError"}, TypeError, "exclude: must be an exception type or a tuple"),
    ({"exclude": [KeyError]}, TypeError, "exclude: must be an exception type or a tuple"),
    ({"fallback": "cached"}, TypeError, "fallback: must be callable or None, got 'cached'"),
    ({"clock": 12.0}, TypeError, "clock: must be callable or None, got 12.0"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS)
def test_every_bad_argument_names_the_parameter_and_value(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        CircuitBreaker("db", **kwargs)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [(None, TypeError, "name: must be a str, got NoneType"), ("", ValueError, "name: must not")],
)
def test_a_bad_name_is_refused(name: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        CircuitBreaker(name)


def test_good_edge_values_are_accepted() -> None:
    breaker = CircuitBreaker(
        "edge",
        reset_timeout=0,
        failure_rate=1,
        max_reset_timeout=0,
        backoff=1,
        exclude=(KeyError, OSError),
    )
    assert breaker.exclude == (KeyError, OSError)
    assert breaker.reset_timeout == 0.0
