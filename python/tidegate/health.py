"""Readiness and liveness for load balancers: health checks with timeouts, caching, single flight.

``HealthChecks`` only decides; it never serves HTTP. ``readiness()`` and ``liveness()`` return
``(status_code, body)`` where the body is a JSON-serialisable dict, and the WSGI middleware or
Flask extension renders it.

Every check runs in its own daemon thread under its own timeout (never ``SIGALRM``, so it works
in any thread and under any server). The checks of one run execute concurrently, so a run takes
about as long as its slowest check, and never longer than the largest timeout. A check that hangs
is reported as timed out right on time and is not started again until its call returns: later
runs report it as timed out at once, so a dependency that hangs cannot pile up threads.

Results are cached for ``cache_ttl`` seconds and concurrent probes share one run, so a burst of
probes from many load balancers costs each dependency one call per TTL.
"""

from __future__ import annotations

import json
import logging
import math
import reprlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict, TypeVar

from tidegate._tidegate import metrics_health_check, process_draining

__all__ = [
    "BreakerLike",
    "BreakerReport",
    "CheckReport",
    "HealthChecks",
    "LivenessBody",
    "MaintenanceLike",
    "MaintenanceStatusLike",
    "ReadinessBody",
    "RetryAfterLike",
]

logger = logging.getLogger("tidegate")

_F = TypeVar("_F", bound=Callable[[], object])

Status = Literal["ready", "degraded", "maintenance", "unavailable"]
Reason = Literal["check_failed", "breaker_open", "draining", "maintenance"]


class RetryAfterLike(Protocol):
    """Anything with ``delay() -> int`` seconds, such as ``tidegate.RetryAfter``."""

    def delay(self) -> int: ...


class MaintenanceStatusLike(Protocol):
    """What ``readiness()`` reads from ``maintenance.status()``."""

    @property
    def active(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def retry_after(self) -> RetryAfterLike | None: ...


class MaintenanceLike(Protocol):
    """Anything with ``status()``, such as ``tidegate.MaintenanceSwitch``."""

    def status(self) -> MaintenanceStatusLike: ...


class BreakerLike(Protocol):
    """What ``add_breaker()`` reads from a breaker, such as ``tidegate.CircuitBreaker``."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def retry_after(self) -> float: ...


class _CheckReportBase(TypedDict):
    ok: bool
    critical: bool
    duration_ms: float
    timed_out: bool


class CheckReport(_CheckReportBase, total=False):
    """One check in a readiness body. ``error`` and ``detail`` appear only with ``show_details``."""

    error: str
    detail: object


class BreakerReport(TypedDict):
    """One breaker in a readiness body. ``ok`` is false only while the breaker is open."""

    state: str
    critical: bool
    ok: bool


class ReadinessBody(TypedDict):
    """The readiness body; see ``HealthChecks.readiness``."""

    status: Status
    reason: Reason | None
    maintenance: bool
    draining: bool
    retry_after: int | None
    checks: dict[str, CheckReport]
    breakers: dict[str, BreakerReport]


class LivenessBody(TypedDict):
    """The liveness body: always ``{"status": "alive"}``."""

    status: Literal["alive"]


@dataclass(eq=False)
class _Call:
    """One call of a check in its worker thread."""

    started: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    elapsed: float = 0.0
    value: object = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Check:
    name: str
    fn: Callable[[], object]
    timeout: float
    critical: bool
    # The call still running, if any; guarded by HealthChecks._lock.
    busy: _Call | None = None
    # Whether the last run found it failing: only a change is logged. Written by the one
    # run in progress only.
    failing: bool = False


@dataclass(eq=False)
class _Breaker:
    breaker: BreakerLike
    critical: bool


@dataclass(frozen=True)
class _Result:
    ok: bool
    critical: bool
    duration: float
    timed_out: bool = False
    error: str | None = None
    detail: object = None


class _Flight:
    """A run in progress that other probes wait for instead of starting their own."""

    def __init__(self, generation: int) -> None:
        self.generation = generation  # which set of checks it runs
        self.done = threading.Event()
        self.results: dict[str, _Result] | None = None


class HealthChecks:
    """A set of named dependency checks and circuit breakers behind readiness and liveness.

    ``cache_ttl`` (seconds, >= 0) is how long one run's results answer probes; ``0`` runs the
    checks for every probe that does not find a run already in progress. ``show_details`` puts
    error text and check details in bodies (off by default: bodies may be public; failures are
    logged on the ``tidegate`` logger when a check starts failing, with the traceback, and when
    it passes again, not on every probe). ``fail_during_maintenance`` makes
    readiness 503 during maintenance, for setups where the reverse proxy serves the maintenance
    page. ``default_timeout`` (seconds, > 0) applies to checks added without a ``timeout``.
    ``clock`` is the monotonic clock the cache reads (for tests).
    """

    def __init__(
        self,
        *,
        cache_ttl: float = 1.0,
        show_details: bool = False,
        fail_during_maintenance: bool = False,
        default_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache_ttl = _seconds("cache_ttl", cache_ttl, allow_zero=True)
        self._show_details = _flag("show_details", show_details)
        self._fail_during_maintenance = _flag("fail_during_maintenance", fail_during_maintenance)
        self._default_timeout = _seconds("default_timeout", default_timeout, allow_zero=False)
        if not callable(clock):
            raise TypeError(f"clock: expected a callable returning seconds, got {clock!r}")
        self._clock = clock
        self._lock = threading.Lock()
        self._checks: dict[str, _Check] = {}
        self._breakers: dict[str, _Breaker] = {}
        self._cached: dict[str, _Result] | None = None
        self._cached_at = 0.0
        self._generation = 0
        self._flight: _Flight | None = None

    def __repr__(self) -> str:
        with self._lock:
            checks, breakers = list(self._checks), list(self._breakers)
        return f"<HealthChecks checks={checks!r} breakers={breakers!r}>"

    @property
    def cache_ttl(self) -> float:
        """Seconds one run's results answer probes."""
        return self._cache_ttl

    @property
    def show_details(self) -> bool:
        """Whether bodies carry error text and check details."""
        return self._show_details

    @property
    def fail_during_maintenance(self) -> bool:
        """Whether readiness is 503 during maintenance."""
        return self._fail_during_maintenance

    @property
    def default_timeout(self) -> float:
        """Seconds a check added without ``timeout`` may take."""
        return self._default_timeout

    def add(
        self,
        name: str,
        check: Callable[[], object],
        *,
        timeout: float | None = None,
        critical: bool = True,
    ) -> None:
        """Register ``check``, a zero-argument callable, under a unique ``name``.

        The check passes when it returns without raising and does not return ``False``. A
        returned ``str`` or ``dict`` is shown as ``detail`` when ``show_details`` is on. A
        failing ``critical`` check makes readiness 503; a non-critical one makes it "degraded"
        (still 200). ``timeout`` defaults to ``default_timeout``.
        """
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {name!r}")
        if not name.strip():
            raise ValueError(f"name: must not be empty, got {name!r}")
        if not callable(check):
            raise TypeError(f"check: expected a zero-argument callable, got {check!r}")
        seconds = (
            self._default_timeout
            if timeout is None
            else _seconds("timeout", timeout, allow_zero=False)
        )
        entry = _Check(name, check, seconds, _flag("critical", critical))
        with self._lock:
            if name in self._checks:
                raise ValueError(f"name: a check named {name!r} is already registered")
            self._checks[name] = entry
            self._cached = None  # the next probe must include the new check
            self._generation += 1

    def check(
        self, name: str, *, timeout: float | None = None, critical: bool = True
    ) -> Callable[[_F], _F]:
        """Decorator form of ``add``: ``@health.check("db")`` registers the function below."""

        def register(fn: _F) -> _F:
            self.add(name, fn, timeout=timeout, critical=critical)
            return fn

        return register

    def add_breaker(self, breaker: BreakerLike, *, critical: bool = True) -> None:
        """Report ``breaker`` (by its ``name``) in readiness; it fails only while "open".

        "half_open" counts as healthy: the breaker is letting probe calls through to find out
        whether the dependency recovered, and taking the instance out of rotation would starve
        those probes. The state is read live on every probe (it is a cheap read), not cached.
        """
        missing = [a for a in ("name", "state", "retry_after") if not hasattr(breaker, a)]
        if missing:
            raise TypeError(
                f"breaker: expected an object with name, state and retry_after, got {breaker!r}"
            )
        name = breaker.name
        if not isinstance(name, str):
            raise TypeError(f"breaker: its name must be a str, got {name!r}")
        entry = _Breaker(breaker, _flag("critical", critical))
        with self._lock:
            if name in self._breakers:
                raise ValueError(f"breaker: a breaker named {name!r} is already registered")
            self._breakers[name] = entry

    def liveness(self) -> tuple[int, LivenessBody]:
        """``(200, {"status": "alive"})`` whenever the process can answer. Runs no checks."""
        return 200, {"status": "alive"}

    def readiness(self, maintenance: MaintenanceLike | None = None) -> tuple[int, ReadinessBody]:
        """Whether a load balancer should route traffic here: ``(status_code, body)``.

        In order of precedence:

        - draining (``maintenance.status().draining``, or the whole process through
          :func:`tidegate.drain_process`, with or without ``maintenance``): 503, reason
          ``"draining"``;
        - maintenance (``.active``): 200 with status ``"maintenance"`` so the load balancer keeps
          routing to the app's own maintenance page, or 503 with reason ``"maintenance"`` when
          ``fail_during_maintenance`` is on;
        - a critical check failing: 503, reason ``"check_failed"``;
        - a critical breaker open: 503, reason ``"breaker_open"``;
        - only non-critical checks or breakers failing: 200, status ``"degraded"``;
        - otherwise 200, status ``"ready"``.

        While draining or in maintenance the answer does not depend on the checks, so they are
        not run (``"checks"`` is empty): a dependency taken down for maintenance is neither
        called nor logged about every second. Breakers are always reported.

        Body::

            {"status": "ready" | "degraded" | "maintenance" | "unavailable",
             "reason": None | "check_failed" | "breaker_open" | "draining" | "maintenance",
             "maintenance": bool, "draining": bool,
             "retry_after": int (seconds, >= 1) when 503, else None,
             "checks": {name: {"ok": bool, "critical": bool, "duration_ms": float,
                               "timed_out": bool, "error": str, "detail": str | dict}},
             "breakers": {name: {"state": str, "critical": bool, "ok": bool}}}

        ``error`` and ``detail`` appear only with ``show_details``. ``retry_after`` is the
        maintenance status's ``retry_after.delay()`` when draining or in maintenance (else
        ``cache_ttl``), the longest ``retry_after`` of the open critical breakers, or
        ``cache_ttl`` for failing checks, rounded up.
        """
        active = False
        draining = process_draining()
        status = None
        if maintenance is not None:
            probe = getattr(maintenance, "status", None)
            if not callable(probe):
                raise TypeError(
                    f"maintenance: expected an object with status(), got {maintenance!r}"
                )
            status = probe()
            active = bool(status.active)
            # Tolerate a status object from before draining existed.
            draining = draining or bool(getattr(status, "draining", False))
        breakers = self._breaker_snapshot()
        body: ReadinessBody = {
            "status": "ready",
            "reason": None,
            "maintenance": active,
            "draining": draining,
            "retry_after": None,
            "checks": {},
            "breakers": {name: report for name, report, _ in breakers},
        }
        if draining or active:
            if draining or self._fail_during_maintenance:
                delay = _status_delay(status)
                return self._unavailable(
                    body,
                    "draining" if draining else "maintenance",
                    self._cache_ttl if delay is None else delay,
                )
            body["status"] = "maintenance"
            return 200, body

        results = self._results()
        body["checks"] = {name: self._report(result) for name, result in results.items()}
        if any(r.critical and not r.ok for r in results.values()):
            return self._unavailable(body, "check_failed", self._cache_ttl)
        open_critical = [
            wait for _, report, wait in breakers if report["critical"] and not report["ok"]
        ]
        if open_critical:
            return self._unavailable(body, "breaker_open", max(open_critical))
        degraded = any(not r.ok for r in results.values()) or any(
            not report["ok"] for _, report, _ in breakers
        )
        if degraded:
            body["status"] = "degraded"
        return 200, body

    def _unavailable(
        self, body: ReadinessBody, reason: Reason, wait: float
    ) -> tuple[int, ReadinessBody]:
        body["status"] = "unavailable"
        body["reason"] = reason
        body["retry_after"] = max(1, _ceil(wait))
        return 503, body

    def _report(self, result: _Result) -> CheckReport:
        report: CheckReport = {
            "ok": result.ok,
            "critical": result.critical,
            "duration_ms": round(result.duration * 1000.0, 3),
            "timed_out": result.timed_out,
        }
        if self._show_details:
            if result.error is not None:
                report["error"] = result.error
            if result.detail is not None:
                report["detail"] = result.detail
        return report

    def _breaker_snapshot(self) -> list[tuple[str, BreakerReport, float]]:
        with self._lock:
            entries = list(self._breakers.items())
        snapshot = []
        for name, entry in entries:
            state = str(entry.breaker.state)
            report: BreakerReport = {
                "state": state,
                "critical": entry.critical,
                "ok": state != "open",
            }
            wait = 0.0 if report["ok"] else _finite_or_zero(entry.breaker.retry_after)
            snapshot.append((name, report, wait))
        return snapshot

    def _results(self) -> dict[str, _Result]:
        """The cached results, or those of the run in progress, or of a new run."""
        while True:
            with self._lock:
                if self._cached is not None and self._clock() - self._cached_at < self._cache_ttl:
                    return self._cached
                flight = self._flight
                if flight is None:
                    flight = self._flight = _Flight(self._generation)
                    break
                current = flight.generation == self._generation
            flight.done.wait()
            # A run that started before a check was added, or that blew up, does not answer
            # this probe: go round again, perhaps to lead the next run.
            if current and flight.results is not None:
                return flight.results
        try:
            results = self._run()
            with self._lock:
                if flight.generation == self._generation:
                    self._cached, self._cached_at = results, self._clock()
            flight.results = results
            return results
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()

    def _run(self) -> dict[str, _Result]:
        with self._lock:
            checks = list(self._checks.values())
        # Start every check before waiting for any, so they run side by side.
        started = [(check, self._start(check)) for check in checks]
        results = {}
        for check, call in started:
            result, error = self._await(check, call) if isinstance(call, _Call) else call
            results[check.name] = result
            _log_change(check, result, error)
            metrics_health_check(check.name, result.ok)
        return results

    def _start(self, check: _Check) -> _Call | tuple[_Result, BaseException | None]:
        """Start ``check`` in a worker thread, unless its previous call has not returned."""
        call = _Call()
        with self._lock:
            busy = check.busy
            if busy is None:
                check.busy = call
        if busy is not None:
            running = time.perf_counter() - busy.started
            error = f"timed out: still running from an earlier run after {running:.1f}s"
            return _Result(False, check.critical, running, True, error), None
        worker = threading.Thread(
            target=self._call,
            args=(check, call),
            name=f"tidegate-health-{check.name}",
            daemon=True,
        )
        try:
            worker.start()
        except RuntimeError as exc:  # out of threads
            with self._lock:
                check.busy = None
            return _Result(False, check.critical, 0.0, False, _describe(exc)), exc
        return call

    def _call(self, check: _Check, call: _Call) -> None:
        try:
            call.value = check.fn()
        except BaseException as exc:  # whatever it is, the check failed
            call.error = exc
        finally:
            call.elapsed = time.perf_counter() - call.started
            with self._lock:
                if check.busy is call:
                    check.busy = None
            call.done.set()

    def _await(self, check: _Check, call: _Call) -> tuple[_Result, BaseException | None]:
        """The check's result, and the exception it raised, if any, for the log."""
        remaining = call.started + check.timeout - time.perf_counter()
        if not call.done.wait(max(0.0, remaining)):
            error = f"timed out after {check.timeout:g}s"
            waited = time.perf_counter() - call.started
            return _Result(False, check.critical, waited, True, error), None
        if call.error is not None:
            exc = call.error
            call.error = None  # the caller drops the frames the traceback holds once logged
            return _Result(False, check.critical, call.elapsed, False, _describe(exc)), exc
        if call.value is False:
            return _Result(False, check.critical, call.elapsed, False, "returned False"), None
        detail = _detail(call.value) if self._show_details else None
        return _Result(True, check.critical, call.elapsed, detail=detail), None


def _log_change(check: _Check, result: _Result, error: BaseException | None) -> None:
    """Log a check that starts failing (with the traceback of what it raised) or passes
    again. A check failing probe after probe is logged once: a load balancer probes every
    second or so, and a traceback per probe buries everything else in the log."""
    failing = not result.ok
    if failing == check.failing:
        return
    check.failing = failing
    if result.ok:
        logger.warning("health check %r passes again", check.name)
    else:
        logger.warning("health check %r is failing: %s", check.name, result.error, exc_info=error)


def _seconds(param: str, value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{param}: expected a number of seconds, got {value!r}")
    seconds = float(value)
    bound = "a finite number >= 0" if allow_zero else "a finite number > 0"
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{param}: must be {bound}, got {value!r}")
    return seconds


def _flag(param: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{param}: expected a bool, got {value!r}")
    return value


def _ceil(seconds: float) -> int:
    return math.ceil(seconds) if math.isfinite(seconds) else 1


def _finite_or_zero(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _status_delay(status: MaintenanceStatusLike | None) -> int | None:
    retry_after = None if status is None else getattr(status, "retry_after", None)
    if retry_after is None:
        return None
    return int(retry_after.delay())


def _describe(exc: BaseException) -> str:
    """``"Type: message"`` for a body. Total: an exception whose ``str`` raises is described
    by its type alone, so a check cannot break readiness by how it fails."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:
        return f"{name} (its message could not be read)"
    return f"{name}: {text}" if text else name


#: How much of a detail that is not JSON a body shows (as its repr, cut short).
_DETAIL_REPR = reprlib.Repr()
_DETAIL_REPR.maxlevel = 3
_DETAIL_REPR.maxstring = 200
_DETAIL_REPR.maxother = 200


def _detail(value: object) -> object:
    """What a body shows for a check's return value: a str as it is, a dict as a plain JSON
    copy taken now, anything else nothing.

    Total: a dict that JSON cannot hold (too deep, NaN, odd keys or values, changing under
    another thread) is shown as a short repr, and one whose repr raises too as its type
    name, so no return value can break readiness.
    """
    if isinstance(value, str):
        return str.__str__(value)  # a plain copy, whatever a subclass's __str__ does
    if not isinstance(value, dict):
        return None
    try:
        # A copy of plain JSON types: the check may go on changing its own dict, and the
        # body is serialised later, on another thread, with no room left for surprises.
        copied: object = json.loads(json.dumps(value, allow_nan=False))
    except Exception:  # RecursionError, TypeError, ValueError, RuntimeError, ...
        try:
            return _DETAIL_REPR.repr(value)
        except Exception:
            return f"<{type(value).__name__} that cannot be shown>"
    return copied
