"""HealthChecks: readiness and liveness as a load balancer sees them."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import UnprintableError, Unrepresentable, hammer, nested

import tidegate
from tidegate import HealthChecks


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeRetryAfter:
    seconds: int

    def delay(self) -> int:
        return self.seconds


@dataclass
class FakeStatus:
    active: bool = False
    draining: bool = False
    message: str | None = None
    until: object = None
    retry_after: FakeRetryAfter | None = None


class FakeMaintenance:
    def __init__(self, **status: Any) -> None:
        self.current = FakeStatus(**status)

    def status(self) -> FakeStatus:
        return self.current


@dataclass
class FakeBreaker:
    name: str
    state: str = "closed"
    retry_after: float = 0.0


class Counter:
    """A check that counts its calls and can be told to fail or to block."""

    def __init__(self, result: object = None) -> None:
        self.calls = 0
        self.result = result
        self.block: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> object:
        with self._lock:
            self.calls += 1
        self.entered.set()
        if self.block is not None:
            self.block.wait(30)
        return self.result


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hanging checks block on; set at teardown so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def hang(event: threading.Event) -> Any:
    def check() -> None:
        event.wait(30)

    return check


def boom() -> None:
    raise RuntimeError("secret dsn postgres://admin:hunter2@db")


def probe_until_ok(health: HealthChecks, deadline: float = 10.0) -> dict[str, Any]:
    """Probe until readiness passes; for waiting on a worker thread the test cannot join."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        code, body = health.readiness()
        if code == 200:
            return dict(body)
        time.sleep(0.01)
    pytest.fail("readiness never recovered")


# --- the basic answers ---------------------------------------------------------------------


def test_exported_from_the_package() -> None:
    assert "HealthChecks" in tidegate.__all__
    assert tidegate.HealthChecks is HealthChecks


def test_passing_checks_are_ready_and_the_body_is_json() -> None:
    health = HealthChecks()
    health.add("db", lambda: None)
    health.add("cache", lambda: True, critical=False)
    code, body = health.readiness()
    assert code == 200
    checks = body["checks"]
    assert set(checks) == {"db", "cache"}
    for name, critical in (("db", True), ("cache", False)):
        report = checks[name]
        assert set(report) == {"ok", "critical", "duration_ms", "timed_out"}
        assert report["ok"] is True and report["timed_out"] is False
        assert report["critical"] is critical
        assert isinstance(report["duration_ms"], float) and report["duration_ms"] >= 0
    assert {k: v for k, v in body.items() if k != "checks"} == {
        "status": "ready",
        "reason": None,
        "maintenance": False,
        "draining": False,
        "retry_after": None,
        "breakers": {},
    }
    assert json.loads(json.dumps(body)) == body


def test_no_checks_is_ready() -> None:
    assert HealthChecks().readiness() == (
        200,
        {
            "status": "ready",
            "reason": None,
            "maintenance": False,
            "draining": False,
            "retry_after": None,
            "checks": {},
            "breakers": {},
        },
    )


def test_a_failing_critical_check_is_503_with_retry_after() -> None:
    health = HealthChecks(cache_ttl=2.5)
    health.add("db", boom)
    health.add("cache", lambda: None)
    code, body = health.readiness()
    assert code == 503
    assert body["status"] == "unavailable"
    assert body["reason"] == "check_failed"
    assert body["retry_after"] == 3  # cache_ttl rounded up
    assert body["checks"]["db"]["ok"] is False
    assert body["checks"]["db"]["timed_out"] is False
    assert body["checks"]["cache"]["ok"] is True


def test_retry_after_is_at_least_one_second() -> None:
    health = HealthChecks(cache_ttl=0)
    health.add("db", boom)
    assert health.readiness()[1]["retry_after"] == 1


def test_a_failing_non_critical_check_is_degraded_but_200() -> None:
    health = HealthChecks()
    health.add("db", lambda: None)
    health.add("search", boom, critical=False)
    code, body = health.readiness()
    assert code == 200
    assert body["status"] == "degraded"
    assert body["reason"] is None and body["retry_after"] is None
    assert body["checks"]["search"] == {
        "ok": False,
        "critical": False,
        "duration_ms": body["checks"]["search"]["duration_ms"],
        "timed_out": False,
    }


@pytest.mark.parametrize(
    ("result", "ok"),
    [(None, True), (True, True), ("fine", True), ({"lag": 3}, True), (0, True), (False, False)],
)
def test_only_raising_or_returning_false_fails(result: object, ok: bool) -> None:
    health = HealthChecks()
    health.add("db", lambda: result)
    code, body = health.readiness()
    assert body["checks"]["db"]["ok"] is ok
    assert code == (200 if ok else 503)


def test_liveness_never_runs_checks() -> None:
    check = Counter()
    health = HealthChecks()
    health.add("db", check)
    health.add("broken", boom)
    for _ in range(5):
        assert health.liveness() == (200, {"status": "alive"})
    assert check.calls == 0


def test_check_decorator_registers_and_returns_the_function() -> None:
    health = HealthChecks()

    @health.check("db", timeout=0.5, critical=False)
    def database() -> bool:
        return False

    assert database() is False
    code, body = health.readiness()
    assert code == 200 and body["status"] == "degraded"
    assert body["checks"]["db"]["critical"] is False


def test_instances_are_independent() -> None:
    first, second = HealthChecks(), HealthChecks()
    first.add("db", boom)
    second.add("db", lambda: None)
    assert first.readiness()[0] == 503
    assert second.readiness()[0] == 200


# --- timeouts and threads -------------------------------------------------------------------


def test_a_hanging_check_times_out_on_time(release: threading.Event) -> None:
    health = HealthChecks(default_timeout=5.0)
    health.add("slow", hang(release), timeout=0.25)
    health.add("fast", lambda: None)
    start = time.perf_counter()
    code, body = health.readiness()
    elapsed = time.perf_counter() - start
    assert 0.25 <= elapsed < 2.0
    assert code == 503 and body["reason"] == "check_failed"
    slow = body["checks"]["slow"]
    assert slow["ok"] is False and slow["timed_out"] is True
    assert 250 <= slow["duration_ms"] < 2000
    assert body["checks"]["fast"]["ok"] is True


def test_default_timeout_applies(release: threading.Event) -> None:
    health = HealthChecks(default_timeout=0.2)
    health.add("slow", hang(release))
    start = time.perf_counter()
    assert health.readiness()[1]["checks"]["slow"]["timed_out"] is True
    assert 0.2 <= time.perf_counter() - start < 2.0


def test_checks_of_one_run_execute_concurrently() -> None:
    # Each check waits for all the others: run one after another, they would time out.
    together = threading.Barrier(4, timeout=5)
    health = HealthChecks(default_timeout=10)
    for i in range(4):
        health.add(f"c{i}", together.wait)
    code, body = health.readiness()
    assert code == 200, body
    assert all(report["ok"] for report in body["checks"].values())


def test_hung_checks_time_out_together_not_one_after_another(release: threading.Event) -> None:
    health = HealthChecks()
    for i in range(4):
        health.add(f"c{i}", hang(release), timeout=0.3)
    start = time.perf_counter()
    health.readiness()
    assert time.perf_counter() - start < 1.1  # one after another would be 1.2s


def test_a_hung_check_is_not_restarted_while_it_runs(release: threading.Event) -> None:
    check = Counter()
    check.block = release
    health = HealthChecks(cache_ttl=0)
    health.add("stuck", check, timeout=0.3)
    health.add("fine", Counter())
    assert health.readiness()[1]["checks"]["stuck"]["timed_out"] is True
    threads = threading.active_count()
    for _ in range(20):
        start = time.perf_counter()
        code, body = health.readiness()
        # Reported as timed out at once: nothing is started, nothing waited for.
        assert time.perf_counter() - start < 0.2
        assert code == 503
        assert body["checks"]["stuck"]["timed_out"] is True
        assert body["checks"]["stuck"]["ok"] is False
        assert body["checks"]["fine"]["ok"] is True
    assert check.calls == 1
    assert threading.active_count() <= threads  # no pile-up of hung threads

    release.set()
    check.block = None
    recovered = probe_until_ok(health)
    assert recovered["checks"]["stuck"]["ok"] is True
    assert check.calls == 2


# --- caching and single flight --------------------------------------------------------------


def test_results_are_cached_for_the_ttl() -> None:
    clock = FakeClock()
    check = Counter()
    health = HealthChecks(cache_ttl=1.0, clock=clock)
    health.add("db", check)
    first = health.readiness()
    clock.advance(0.5)
    assert health.readiness() == first
    clock.advance(0.49)
    assert health.readiness() == first
    assert check.calls == 1
    clock.advance(0.01)
    health.readiness()
    assert check.calls == 2


def test_cached_results_keep_the_failure() -> None:
    clock = FakeClock()
    state = {"up": True}

    def db() -> bool:
        return state["up"]

    health = HealthChecks(cache_ttl=5, clock=clock)
    health.add("db", db)
    assert health.readiness()[0] == 200
    state["up"] = False
    clock.advance(4.9)
    assert health.readiness()[0] == 200  # still the cached answer
    clock.advance(0.1)
    assert health.readiness()[0] == 503
    state["up"] = True
    clock.advance(1)
    assert health.readiness()[0] == 503
    clock.advance(4)
    assert health.readiness()[0] == 200


def test_zero_ttl_runs_every_probe() -> None:
    check = Counter()
    health = HealthChecks(cache_ttl=0)
    health.add("db", check)
    for _ in range(5):
        health.readiness()
    assert check.calls == 5


def test_adding_a_check_is_seen_by_the_next_probe() -> None:
    clock = FakeClock()
    health = HealthChecks(cache_ttl=60, clock=clock)
    health.add("db", lambda: None)
    assert set(health.readiness()[1]["checks"]) == {"db"}
    health.add("cache", boom)
    code, body = health.readiness()
    assert set(body["checks"]) == {"db", "cache"}
    assert code == 503


def probe_together(health: HealthChecks, check: Counter, threads: int) -> list[tuple[int, Any]]:
    """Probe from many threads at once while ``check`` is held up, then let it finish."""
    check.entered.clear()
    check.block = threading.Event()
    block = check.block

    def hold_then_release() -> None:
        try:
            assert check.entered.wait(10)
            time.sleep(0.05)  # let the other probes reach the run in progress
        finally:
            block.set()

    results = hammer(
        lambda thread, turn: health.readiness(),
        threads=threads,
        times=1,
        during=hold_then_release,
    ).results
    assert len(results) == threads
    return results


def test_concurrent_probes_share_one_run() -> None:
    clock = FakeClock()
    check = Counter()
    health = HealthChecks(cache_ttl=1.0, clock=clock)
    health.add("db", check)
    for round_ in range(1, 16):
        clock.advance(1.0)  # the previous round's results have expired
        results = probe_together(health, check, threads=32)
        assert check.calls == round_  # exactly one call per round, however many probes
        assert all(result == results[0] for result in results)
        assert results[0][0] == 200


def tidegate_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tidegate"]


def test_a_failing_check_is_logged_when_it_fails_and_when_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Probed once a second for minutes, a failing check logs its traceback once, not 60
    times a minute; its recovery once; and a new failure once again."""
    clock = FakeClock()
    health = HealthChecks(cache_ttl=1.0, clock=clock)
    check = Counter()
    failing = True

    def db() -> None:
        check()
        if failing:
            boom()

    health.add("db", db)
    caplog.set_level(logging.INFO, logger="tidegate")
    for _ in range(30):  # 30 probes, 15 runs
        assert health.readiness()[0] == 503
        clock.advance(0.5)
    assert check.calls == 15
    [failed] = tidegate_records(caplog)
    assert failed.levelno == logging.WARNING
    assert failed.getMessage() == (
        "health check 'db' is failing: RuntimeError: secret dsn postgres://admin:hunter2@db"
    )
    assert failed.exc_info is not None and failed.exc_info[0] is RuntimeError
    assert "Traceback" in caplog.text
    failing = False
    for _ in range(10):
        clock.advance(1.0)
        assert health.readiness()[0] == 200
    assert [r.getMessage() for r in tidegate_records(caplog)[1:]] == [
        "health check 'db' passes again"
    ]
    failing = True
    for _ in range(10):
        clock.advance(1.0)
        assert health.readiness()[0] == 503
    assert len(tidegate_records(caplog)) == 3
    assert tidegate_records(caplog)[2].getMessage().startswith("health check 'db' is failing")


def test_timeouts_are_logged_once(
    caplog: pytest.LogCaptureFixture, release: threading.Event
) -> None:
    health = HealthChecks(cache_ttl=0)
    health.add("slow", hang(release), timeout=0.05)
    health.add("fine", lambda: True)
    caplog.set_level(logging.INFO, logger="tidegate")
    for _ in range(5):
        assert health.readiness()[1]["checks"]["slow"]["timed_out"]
    messages = [r.getMessage() for r in tidegate_records(caplog)]
    assert messages == ["health check 'slow' is failing: timed out after 0.05s"]
    release.set()
    probe_until_ok(health)
    assert [r.getMessage() for r in tidegate_records(caplog)][1:] == [
        "health check 'slow' passes again"
    ]


def test_returning_false_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    health = HealthChecks(cache_ttl=0)
    health.add("flag", lambda: False)
    caplog.set_level(logging.INFO, logger="tidegate")
    for _ in range(5):
        assert health.readiness()[0] == 503
    [record] = tidegate_records(caplog)
    assert record.getMessage() == "health check 'flag' is failing: returned False"
    assert record.exc_info is None


# --- error details --------------------------------------------------------------------------


def test_error_details_are_hidden_by_default(caplog: pytest.LogCaptureFixture) -> None:
    health = HealthChecks()
    health.add("db", boom)
    health.add("info", lambda: {"replica_lag": 12, "host": "db-internal-7"})
    caplog.set_level(logging.WARNING, logger="tidegate")
    code, body = health.readiness()
    text = json.dumps(body)
    assert code == 503
    for leak in ("hunter2", "RuntimeError", "Traceback", "secret", "db-internal-7"):
        assert leak not in text
    assert "error" not in body["checks"]["db"]
    assert "detail" not in body["checks"]["info"]
    # ...but the operator finds them in the log.
    assert "hunter2" in caplog.text and "Traceback" in caplog.text


def test_show_details_puts_errors_and_details_in_the_body(release: threading.Event) -> None:
    health = HealthChecks(show_details=True)
    health.add("db", boom)
    health.add("falsy", lambda: False)
    health.add("info", lambda: {"replica_lag": 12})
    health.add("note", lambda: "read-only replica")
    health.add("odd", lambda: {"at": object()}, critical=False)
    health.add("slow", hang(release), timeout=0.05)
    checks = health.readiness()[1]["checks"]
    assert checks["db"]["error"] == "RuntimeError: secret dsn postgres://admin:hunter2@db"
    assert "Traceback" not in checks["db"]["error"]
    assert checks["falsy"]["error"] == "returned False"
    assert checks["info"]["detail"] == {"replica_lag": 12}
    assert "error" not in checks["info"]
    assert checks["note"]["detail"] == "read-only replica"
    assert isinstance(checks["odd"]["detail"], str)  # not JSON-able: shown as its repr
    assert checks["slow"]["error"] == "timed out after 0.05s"
    json.dumps(checks)


# --- maintenance and draining ---------------------------------------------------------------


def test_maintenance_keeps_readiness_200_and_says_so() -> None:
    check = Counter()
    health = HealthChecks()
    health.add("db", check)
    health.add("broken", boom)
    maintenance = FakeMaintenance(active=True, retry_after=FakeRetryAfter(600))
    code, body = health.readiness(maintenance)
    assert code == 200
    assert body["status"] == "maintenance"
    assert body["maintenance"] is True and body["draining"] is False
    assert body["reason"] is None and body["retry_after"] is None
    assert body["checks"] == {}
    assert check.calls == 0  # the answer does not depend on them


def test_fail_during_maintenance_makes_it_503() -> None:
    health = HealthChecks(fail_during_maintenance=True)
    health.add("db", lambda: None)
    maintenance = FakeMaintenance(active=True, retry_after=FakeRetryAfter(600))
    code, body = health.readiness(maintenance)
    assert code == 503
    assert body["status"] == "unavailable"
    assert body["reason"] == "maintenance"
    assert body["maintenance"] is True
    assert body["retry_after"] == 600


def test_maintenance_without_retry_after_falls_back_to_the_ttl() -> None:
    health = HealthChecks(fail_during_maintenance=True, cache_ttl=4.2)
    code, body = health.readiness(FakeMaintenance(active=True))
    assert (code, body["retry_after"]) == (503, 5)


def test_maintenance_off_runs_the_checks() -> None:
    health = HealthChecks(fail_during_maintenance=True)
    health.add("db", boom)
    code, body = health.readiness(FakeMaintenance(active=False))
    assert (code, body["reason"], body["maintenance"]) == (503, "check_failed", False)


def test_draining_is_503_even_when_all_is_well() -> None:
    check = Counter()
    health = HealthChecks()
    health.add("db", check)
    maintenance = FakeMaintenance(draining=True, retry_after=FakeRetryAfter(0))
    code, body = health.readiness(maintenance)
    assert code == 503
    assert body["status"] == "unavailable"
    assert body["reason"] == "draining"
    assert body["draining"] is True and body["maintenance"] is False
    assert body["retry_after"] == 1
    assert check.calls == 0


def test_draining_wins_over_maintenance() -> None:
    health = HealthChecks()
    code, body = health.readiness(FakeMaintenance(active=True, draining=True))
    assert (code, body["reason"]) == (503, "draining")


def test_maintenance_state_is_read_on_every_probe() -> None:
    health = HealthChecks(cache_ttl=60)
    maintenance = FakeMaintenance()
    assert health.readiness(maintenance)[0] == 200
    maintenance.current = FakeStatus(draining=True)
    assert health.readiness(maintenance)[0] == 503
    maintenance.current = FakeStatus()
    assert health.readiness(maintenance)[0] == 200


# --- circuit breakers -----------------------------------------------------------------------


def test_an_open_critical_breaker_is_503() -> None:
    breaker = FakeBreaker("payments", "open", retry_after=12.2)
    health = HealthChecks()
    health.add_breaker(breaker)
    health.add("db", lambda: None)
    code, body = health.readiness()
    assert code == 503
    assert body["reason"] == "breaker_open"
    assert body["retry_after"] == math.ceil(12.2)
    assert body["breakers"] == {"payments": {"state": "open", "critical": True, "ok": False}}
    assert body["checks"]["db"]["ok"] is True


def test_breaker_state_is_read_live() -> None:
    breaker = FakeBreaker("payments")
    health = HealthChecks(cache_ttl=60)
    health.add_breaker(breaker)
    assert health.readiness()[0] == 200
    breaker.state = "open"
    assert health.readiness()[0] == 503
    breaker.state = "half_open"  # recovering: let probe calls through
    code, body = health.readiness()
    assert (code, body["status"]) == (200, "ready")
    assert body["breakers"]["payments"] == {"state": "half_open", "critical": True, "ok": True}


def test_the_longest_open_breaker_sets_retry_after() -> None:
    health = HealthChecks()
    health.add_breaker(FakeBreaker("a", "open", retry_after=3.0))
    health.add_breaker(FakeBreaker("b", "open", retry_after=40.5))
    health.add_breaker(FakeBreaker("c", "open", retry_after=0.0))
    assert health.readiness()[1]["retry_after"] == 41


def test_an_open_non_critical_breaker_is_degraded() -> None:
    health = HealthChecks()
    health.add_breaker(FakeBreaker("recommendations", "open", 5.0), critical=False)
    code, body = health.readiness()
    assert (code, body["status"], body["reason"]) == (200, "degraded", None)


def test_a_failing_check_wins_over_an_open_breaker() -> None:
    health = HealthChecks(cache_ttl=1)
    health.add_breaker(FakeBreaker("payments", "open", 30.0))
    health.add("db", boom)
    code, body = health.readiness()
    assert (code, body["reason"], body["retry_after"]) == (503, "check_failed", 1)


def test_breakers_are_reported_during_maintenance() -> None:
    health = HealthChecks()
    health.add_breaker(FakeBreaker("payments", "open", 30.0))
    code, body = health.readiness(FakeMaintenance(active=True))
    assert (code, body["status"]) == (200, "maintenance")
    assert body["breakers"]["payments"]["ok"] is False


# --- thread safety --------------------------------------------------------------------------


def test_adding_while_probing_from_many_threads() -> None:
    health = HealthChecks(cache_ttl=0)

    def add_then_probe(i: int, j: int) -> None:
        health.add(f"w{i}-{j}", lambda: None)
        code, body = health.readiness()
        assert code == 200
        assert f"w{i}-{j}" in body["checks"]

    run = hammer(add_then_probe, threads=32, times=10)
    assert run.total == 320
    assert len(health.readiness()[1]["checks"]) == 320


# --- bad configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"cache_ttl": -1}, ValueError, "cache_ttl"),
        ({"cache_ttl": float("nan")}, ValueError, "cache_ttl"),
        ({"cache_ttl": float("inf")}, ValueError, "cache_ttl"),
        ({"cache_ttl": "1"}, TypeError, "cache_ttl"),
        ({"cache_ttl": None}, TypeError, "cache_ttl"),
        ({"cache_ttl": True}, TypeError, "cache_ttl"),
        ({"default_timeout": 0}, ValueError, "default_timeout"),
        ({"default_timeout": -0.5}, ValueError, "default_timeout"),
        ({"default_timeout": float("inf")}, ValueError, "default_timeout"),
        ({"default_timeout": "2"}, TypeError, "default_timeout"),
        ({"show_details": "yes"}, TypeError, "show_details"),
        ({"show_details": 1}, TypeError, "show_details"),
        ({"fail_during_maintenance": None}, TypeError, "fail_during_maintenance"),
        ({"clock": 5}, TypeError, "clock"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type, param: str) -> None:
    with pytest.raises(error) as info:
        HealthChecks(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{param}: ")
    assert repr(next(iter(kwargs.values()))) in message


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "param", "shown"),
    [
        ((5, lambda: None), {}, TypeError, "name", "5"),
        (("", lambda: None), {}, ValueError, "name", "''"),
        (("  ", lambda: None), {}, ValueError, "name", "'  '"),
        (("db", "select 1"), {}, TypeError, "check", "'select 1'"),
        (("db", lambda: None), {"timeout": 0}, ValueError, "timeout", "0"),
        (("db", lambda: None), {"timeout": -1}, ValueError, "timeout", "-1"),
        (("db", lambda: None), {"timeout": float("nan")}, ValueError, "timeout", "nan"),
        (("db", lambda: None), {"timeout": "1"}, TypeError, "timeout", "'1'"),
        (("db", lambda: None), {"critical": "yes"}, TypeError, "critical", "'yes'"),
    ],
)
def test_bad_add_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type, param: str, shown: str
) -> None:
    health = HealthChecks()
    with pytest.raises(error) as info:
        health.add(*args, **kwargs)
    assert str(info.value).startswith(f"{param}: ")
    assert shown in str(info.value)
    assert health.readiness()[1]["checks"] == {}  # nothing half-registered


def test_duplicate_check_names_are_refused() -> None:
    health = HealthChecks()
    health.add("db", lambda: None)
    with pytest.raises(ValueError, match=r"^name: .*'db'"):
        health.add("db", boom)
    assert health.readiness()[0] == 200  # the first one stands


def test_bad_breakers_are_refused() -> None:
    health = HealthChecks()
    with pytest.raises(TypeError, match=r"^breaker: .*object"):
        health.add_breaker(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^breaker: .*42"):
        health.add_breaker(FakeBreaker(42))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^critical: .*'no'"):
        health.add_breaker(FakeBreaker("a"), critical="no")  # type: ignore[arg-type]
    health.add_breaker(FakeBreaker("a"))
    with pytest.raises(ValueError, match=r"^breaker: .*'a'"):
        health.add_breaker(FakeBreaker("a"))


def test_a_maintenance_object_without_status_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^maintenance: "):
        HealthChecks().readiness(object())  # type: ignore[arg-type]


# --- whatever a check returns or raises, readiness answers ----------------------------------


def raise_unprintable() -> None:
    raise UnprintableError


#: name: (check, the readiness status it must give)
HOSTILE: dict[str, tuple[Any, int]] = {
    "nested-5000-deep": (lambda: nested(5000), 200),
    "repr-raises": (lambda: {"thing": Unrepresentable()}, 200),
    "not-a-number": (lambda: {"ratio": math.nan}, 200),
    "str-raises": (raise_unprintable, 503),
}


def hello(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def strict_json(body: bytes) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(body, parse_constant=refuse)


def get_through_werkzeug(middleware: Any, path: str) -> Any:
    from wsgiref.validate import validator

    from werkzeug.test import Client

    return Client(validator(middleware)).get(path, buffered=True)


@pytest.mark.parametrize("show_details", [False, True], ids=["hidden", "show_details"])
@pytest.mark.parametrize("name", HOSTILE)
def test_readiness_answers_whatever_a_check_returns_or_raises(
    name: str, show_details: bool
) -> None:
    from wsgiref.validate import validator

    from tidegate.wsgi import TideGateMiddleware

    check, status = HOSTILE[name]
    health = HealthChecks(show_details=show_details)
    health.add(name, check)
    middleware = TideGateMiddleware(validator(hello), maintenance=False, health=health)
    reply = get_through_werkzeug(middleware, "/health")
    assert reply.status_code == status
    assert reply.headers["Content-Type"] == "application/json"
    document = strict_json(reply.get_data())
    assert document["status"] == ("ready" if status == 200 else "unavailable")
    report = document["checks"][name]
    assert report["ok"] is (status == 200)
    if not show_details:
        assert "detail" not in report and "error" not in report
    elif status == 503:
        assert report["error"] == "UnprintableError (its message could not be read)"
    else:
        assert isinstance(report["detail"], str), "shown as a (short) repr"
        assert len(report["detail"]) < 1000
    if status == 503:
        assert reply.headers["Retry-After"] == "1"


def test_a_checks_dict_is_copied_when_the_check_returns() -> None:
    shared = {"replica_lag": 1}
    health = HealthChecks(show_details=True, cache_ttl=60)
    health.add("lag", lambda: shared)
    assert health.readiness()[1]["checks"]["lag"]["detail"] == {"replica_lag": 1}
    shared["replica_lag"] = 99  # the check keeps and changes its own dict
    assert health.readiness()[1]["checks"]["lag"]["detail"] == {"replica_lag": 1}


class BrokenHealth:
    """A health object of the user's own whose answers cannot be served."""

    def readiness(self, maintenance: object = None) -> tuple[int, dict[str, Any]]:
        raise RuntimeError("readiness broke")

    def liveness(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "alive", "since": object()}


def test_a_health_object_that_breaks_still_gets_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tidegate.wsgi import TideGateMiddleware

    caplog.set_level(logging.ERROR, logger="tidegate")
    middleware = TideGateMiddleware(hello, maintenance=False, health=BrokenHealth())
    ready = get_through_werkzeug(middleware, "/health")
    assert ready.status_code == 503
    assert ready.headers["Retry-After"] == "1"
    assert strict_json(ready.get_data())["reason"] == "check_failed"
    live = get_through_werkzeug(middleware, "/health/live")
    assert live.status_code == 503
    assert strict_json(live.get_data()) == {"status": "unavailable"}
    logged = [r for r in caplog.records if r.name == "tidegate"]
    assert [r.exc_info[0] for r in logged if r.exc_info] == [RuntimeError, TypeError]
