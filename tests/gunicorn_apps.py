"""WSGI apps for the real-server tests, wrapped in TideGateMiddleware; the app measures from
inside how many requests it is handling at once.

The servers import them from the tests directory: ``gunicorn_apps:application``, whose limit
is ``TIDEGATE_TEST_LIMIT`` (default 4; ``auto`` for an adaptive gate);
``gunicorn_apps:ready_application``, the same app with readiness at ``/health`` and liveness
at ``/health/live``; and
``gunicorn_apps:conformance_application``, which can give every kind of response (see
``conformance_app``): limit 1, health, and maintenance and drain from the state file named by
``TIDEGATE_TEST_STATE``; and ``gunicorn_apps:fleet_application`` (see ``fleet_app``), which
follows the store URI in ``TIDEGATE_TEST_STORE`` for maintenance and drain. Routes:

- ``/work?ms=50``: holds for ``ms`` milliseconds, then answers ``done``; with ``pool=1`` it
  holds one of 4 "connections" meanwhile, waiting for one when all are taken.
- ``/stream?chunks=100&ms=10``: ``chunks`` chunks of ``tick\\n`` with ``ms`` milliseconds before
  each one after the first. The request counts as inside the app until the server calls the
  body's ``close()``, as PEP 3333 has it.
- ``/dependency``: calls through an open circuit breaker (``CircuitOpenError`` before the app
  starts its response); ``/dependency-late`` does so after starting a 200 response.
- ``/_stats`` (exempt from the gate): JSON with the app's own counts (``inside``, ``worst``,
  ``entered``, the ``streams_*`` counters) and the gate's (``in_flight``, ``peak``,
  ``admitted``, ``rejected``, ``limit``), plus this worker's ``pid``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from servers import STATS_PATH

from tidegate import CircuitBreaker, HealthChecks, MaintenanceSwitch
from tidegate.wsgi import TideGateMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: ``TIDEGATE_TEST_LIMIT=auto`` makes ``application``'s limit set itself (``limit="auto"``).
_LIMIT_SETTING = os.environ.get("TIDEGATE_TEST_LIMIT", "4")
LIMIT = 4 if _LIMIT_SETTING == "auto" else int(_LIMIT_SETTING)
#: The state file ``conformance_application`` follows for maintenance and drain.
STATE_ENV = "TIDEGATE_TEST_STATE"
CHUNK = b"tick\n"


class Meter:
    """Counts requests inside the app; ``worst`` is the most ever inside at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.worst = 0
        self.entered = 0
        self.streams_started = 0
        self.streams_finished = 0
        self.streams_closed = 0
        self.streams_closed_early = 0

    def enter(self) -> None:
        with self.lock:
            self.entered += 1
            self.inside += 1
            self.worst = max(self.worst, self.inside)

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "inside": self.inside,
                "worst": self.worst,
                "entered": self.entered,
                "streams_started": self.streams_started,
                "streams_finished": self.streams_finished,
                "streams_closed": self.streams_closed,
                "streams_closed_early": self.streams_closed_early,
            }

    def report(self, gate: Any) -> dict[str, Any]:
        """What ``/_stats`` answers: the app's own counts, the gate's, and this worker's pid."""
        document: dict[str, Any] = self.snapshot()
        document.update(
            pid=os.getpid(),
            limit=gate.limit,
            in_flight=gate.in_flight,
            peak=gate.peak,
            admitted=gate.admitted,
            rejected=gate.rejected,
        )
        return document


meter = Meter()


class Stream:
    """A streamed body that stays inside the app (``meter``) until ``close()``."""

    def __init__(self, chunks: int, delay: float, *, meter: Meter = meter) -> None:
        self.chunks = chunks
        self.delay = delay
        self.meter = meter
        self.finished = False
        self.closed = False
        with meter.lock:
            meter.streams_started += 1

    def __iter__(self) -> Iterator[bytes]:
        for index in range(self.chunks):
            if index:
                time.sleep(self.delay)
            yield CHUNK
        self.finished = True
        with self.meter.lock:
            self.meter.streams_finished += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self.meter.lock:
            self.meter.streams_closed += 1
            if not self.finished:
                self.meter.streams_closed_early += 1
        self.meter.leave()


def _number(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    return int(values[0]) if values else default


def _text(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def measured_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == STATS_PATH:
        return _stats(start_response)
    meter.enter()
    if path == "/stream":
        try:
            body = Stream(_number(query, "chunks", 100), _number(query, "ms", 10) / 1000)
            start_response("200 OK", [("Content-Type", "text/plain")])
        except BaseException:
            meter.leave()
            raise
        return body
    try:
        if path == "/work":
            if "pool" in query:
                # A pool of connections the middleware cannot see: requests beyond it queue.
                with _POOL:
                    time.sleep(_number(query, "ms", 50) / 1000)
            else:
                time.sleep(_number(query, "ms", 50) / 1000)
            return _text(start_response, "200 OK", b"done")
        return _text(start_response, "404 Not Found", b"no such route")
    finally:
        meter.leave()


#: ``/work?pool=1``: the request holds one of 4 "database connections" while it works.
_POOL = threading.Semaphore(4)


def _stats(start_response: StartResponse) -> list[bytes]:
    gate = application.gate
    document = meter.report(gate)
    document.update(
        probing=getattr(gate, "probing", None),
        baseline=getattr(gate, "baseline", None),
    )
    body = json.dumps(document).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


application = TideGateMiddleware(
    measured_app,
    limit="auto" if _LIMIT_SETTING == "auto" else LIMIT,
    exempt_paths=[STATS_PATH],
)

ready_application = TideGateMiddleware(
    measured_app, limit=LIMIT, exempt_paths=[STATS_PATH], health=HealthChecks()
)


#: Opened afresh before every call through it: the call fails fast, a full reset_timeout
#: before the next probe.
DEPENDENCY_RESET_TIMEOUT = 600
dependency = CircuitBreaker(
    "conformance-db", failure_threshold=1, reset_timeout=DEPENDENCY_RESET_TIMEOUT
)
#: The overload 503's Retry-After in ``conformance_application``.
CONFORMANCE_RETRY_AFTER = 2
HOLD_PATH = "/_hold"
RELEASE_PATH = "/_release"
_held: list[Any] = []


def _unreachable() -> list[bytes]:
    raise AssertionError("an open breaker ran the call")


def conformance_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """``measured_app`` plus the two routes that meet an open breaker, and (exempt from the
    gate in ``conformance_application``) ``/_hold``, which takes its gate's one permit and
    keeps it, and ``/_release``, which gives it back."""
    path = environ.get("PATH_INFO", "")
    if path in ("/dependency", "/dependency-late"):
        if path == "/dependency-late":
            start_response("200 OK", [("Content-Type", "text/plain")])
        dependency.open()
        return dependency.call(_unreachable)
    if path == HOLD_PATH:
        permit = conformance_application.gate.try_acquire()
        if permit is None:
            return _text(start_response, "409 Conflict", b"the gate is full")
        _held.append(permit)
        return _text(start_response, "200 OK", b"held")
    if path == RELEASE_PATH:
        while _held:
            _held.pop().release()
        return _text(start_response, "200 OK", b"released")
    return measured_app(environ, start_response)


def state_switch() -> MaintenanceSwitch | None:
    """The switch on the state file ``TIDEGATE_TEST_STATE`` names, if it names one; a short
    poll interval, since the tests switch maintenance and drain through the file."""
    state = os.environ.get(STATE_ENV)
    return None if state is None else MaintenanceSwitch(state, env_var=None, poll_interval=0.05)


def _conformance_application() -> TideGateMiddleware:
    return TideGateMiddleware(
        conformance_app,
        limit=1,
        maintenance=state_switch(),
        health=HealthChecks(),
        exempt_paths=[HOLD_PATH, RELEASE_PATH],
        retry_after=CONFORMANCE_RETRY_AFTER,
    )


conformance_application = _conformance_application()


#: The store URI ``fleet_application`` follows, and its poll interval in seconds.
STORE_ENV = "TIDEGATE_TEST_STORE"
POLL_ENV = "TIDEGATE_TEST_POLL"
SEEN_PATH = "/_seen"
#: ``fleet_application``: trips the shared breaker, and calls through it.
TRIP_PATH = "/_trip"
CALL_PATH = "/call"


def _fleet_breaker() -> CircuitBreaker | None:
    store = os.environ.get(STORE_ENV)
    if store is None:
        return None
    return CircuitBreaker(
        "fleet-db",
        failure_threshold=1,
        reset_timeout=DEPENDENCY_RESET_TIMEOUT,
        store=store,
        poll_interval=float(os.environ.get(POLL_ENV, "1.0")),
    )


fleet_breaker = _fleet_breaker()


def _fleet_application() -> TideGateMiddleware | None:
    store = os.environ.get(STORE_ENV)
    if store is None:
        return None
    switch = MaintenanceSwitch(
        store, env_var=None, poll_interval=float(os.environ.get(POLL_ENV, "1.0"))
    )
    return TideGateMiddleware(
        fleet_app,
        limit=LIMIT,
        maintenance=switch,
        health=HealthChecks(),
        exempt_paths=[STATS_PATH, SEEN_PATH, TRIP_PATH],
    )


def fleet_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """``measured_app`` plus ``/_seen`` (exempt): this worker's pid and what its switch says;
    ``/_trip``: opens the fleet's shared breaker here; ``/call``: a call through it."""
    path = environ.get("PATH_INFO")
    assert fleet_breaker is not None
    if path == TRIP_PATH:
        fleet_breaker.open()
        return _text(start_response, "200 OK", b"tripped")
    if path == CALL_PATH:
        return fleet_breaker.call(_text, start_response, "200 OK", b"called")
    if path == SEEN_PATH:
        assert fleet_application is not None and fleet_application.maintenance is not None
        switch = fleet_application.maintenance
        seen = {"pid": os.getpid(), "active": switch.active, "draining": switch.draining}
        return _text(start_response, "200 OK", json.dumps(seen).encode())
    return measured_app(environ, start_response)


fleet_application = _fleet_application()
