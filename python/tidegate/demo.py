"""``tidegate demo``: every kind of 503, seen by real HTTP clients, in a few seconds.

A small WSGI app wrapped in :class:`~tidegate.wsgi.TideGateMiddleware` (a concurrency limit,
a :class:`~tidegate.MaintenanceSwitch` on a temporary state file, :class:`~tidegate.HealthChecks`
reporting a :class:`~tidegate.CircuitBreaker` around a fake dependency) is served by the
standard library's WSGI server on 127.0.0.1. Each scene sends a burst of client threads
(``http.client``, one connection per request) and records what they saw. Nothing but tidegate
and the standard library is needed; everything started is stopped and joined at the end, and
the state file is removed.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import shutil
import socketserver
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from tidegate._tidegate import MaintenanceSwitch
from tidegate.breaker import CircuitBreaker
from tidegate.health import HealthChecks
from tidegate.wsgi import TideGateMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["run"]

HOST = "127.0.0.1"
LIMIT = 8
#: How long the fake dependency takes to fail when it is down (a timeout, say).
FAILURE_SECONDS = 0.1
RESET_TIMEOUT = 0.8
OVERLOAD_WORK_MS = 200


# -- the app -------------------------------------------------------------------------------


class Inventory:
    """A fake dependency: fast when up; when down, each call fails after a timeout."""

    def __init__(self) -> None:
        self.down = False

    def fetch(self) -> str:
        if self.down:
            time.sleep(FAILURE_SECONDS)
            raise ConnectionError("inventory: timed out")
        time.sleep(0.005)
        return "42 widgets"


class ShopApp:
    """``/`` answers at once, ``/slow?ms=N`` works for N ms, ``/stock`` asks the inventory
    through the breaker. A failed dependency call is the app's own 500; an open breaker's
    ``CircuitOpenError`` is left to the middleware, which makes it the dependency 503."""

    def __init__(self, inventory: Inventory, breaker: CircuitBreaker) -> None:
        self.inventory = inventory
        self.breaker = breaker

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/":
            return _reply(start_response, "200 OK", b"hello")
        if path == "/slow":
            values = parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["100"])
            time.sleep(min(int(values[0]), 5000) / 1000)
            return _reply(start_response, "200 OK", b"done")
        if path == "/stock":
            try:
                stock = self.breaker.call(self.inventory.fetch)
            except ConnectionError:
                return _reply(start_response, "500 Internal Server Error", b"inventory failed")
            return _reply(start_response, "200 OK", stock.encode())
        return _reply(start_response, "404 Not Found", b"no such page")


def _reply(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# -- the server ----------------------------------------------------------------------------


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every request thread
    request_queue_size = 256  # a burst must not overflow the listen backlog

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's name, which can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name = HOST
        self.server_port = self.server_address[1]
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up early is not news here


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Seen:
    """What one client saw for one request. ``status`` 0: no HTTP answer at all."""

    status: int
    reason: str | None
    retry_after: int | None
    seconds: float


def fetch(port: int, path: str) -> Seen:
    start = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        reply = conn.getresponse()
        body = reply.read()
        elapsed = time.perf_counter() - start
        if reply.status != 503:
            return Seen(reply.status, None, None, elapsed)
        header = reply.getheader("Retry-After") or ""
        retry_after = int(header) if header.isdigit() else None
        return Seen(503, _json(body).get("reason"), retry_after, elapsed)
    except (OSError, http.client.HTTPException):
        return Seen(0, None, None, time.perf_counter() - start)
    finally:
        conn.close()


def _json(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def readiness(port: int) -> str:
    """What ``/health`` says, in short: ``200 ready``, ``503 draining``..."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/health")
        reply = conn.getresponse()
        body = _json(reply.read())
    except (OSError, http.client.HTTPException) as exc:
        return f"error: {exc}"
    finally:
        conn.close()
    return f"{reply.status} {body.get('reason') or body.get('status')}"


def burst(
    port: int,
    path: str,
    *,
    clients: int,
    each: int,
    pause: float = 0.0,
    during: Callable[[], str] | None = None,
) -> tuple[list[Seen], str | None]:
    """``clients`` threads released together, each sending ``each`` requests one after the
    other (``pause`` seconds apart). ``during`` runs once they are released."""
    gate = threading.Barrier(clients + 1)
    seen: list[list[Seen]] = [[] for _ in range(clients)]

    def client(mine: list[Seen]) -> None:
        try:
            gate.wait(timeout=10)
        except threading.BrokenBarrierError:
            return
        for index in range(each):
            if index and pause:
                time.sleep(pause)
            mine.append(fetch(port, path))

    threads = [
        threading.Thread(target=client, args=(mine,), name=f"tidegate-demo-client-{n}")
        for n, mine in enumerate(seen)
    ]
    for thread in threads:
        thread.start()
    try:
        gate.wait(timeout=10)
        observed = during() if during is not None else None
    except BaseException:
        gate.abort()
        raise
    finally:
        for thread in threads:
            thread.join()
    return [one for mine in seen for one in mine], observed


# -- what clients saw ----------------------------------------------------------------------


def percentile(values: Iterable[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` in 0..100), or None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(share / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One line of the table: a burst and what ``/health`` said meanwhile."""

    label: str
    seen: list[Seen]
    health: str

    def summary(self) -> dict[str, Any]:
        ok = [s.seconds for s in self.seen if s.status == 200]
        refused = [s for s in self.seen if s.status == 503]
        waits = [s.retry_after for s in refused if s.retry_after is not None]
        return {
            "label": self.label,
            "requests": len(self.seen),
            "ok": len(ok),
            "unavailable": dict(Counter(str(s.reason) for s in refused)),
            "other": len(self.seen) - len(ok) - len(refused),
            "retry_after": [min(waits), max(waits)] if waits else None,
            "ok_ms": _latency(ok),
            "unavailable_ms": _latency(s.seconds for s in refused),
            "health": self.health,
        }


def _latency(seconds: Iterable[float]) -> dict[str, float] | None:
    values = list(seconds)
    p50, p99 = percentile(values, 50), percentile(values, 99)
    if p50 is None or p99 is None:
        return None
    return {"p50": round(p50 * 1000, 1), "p99": round(p99 * 1000, 1)}


@dataclass
class Scene:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    takeaway: str = ""


# -- the scenes ----------------------------------------------------------------------------


@dataclass
class Stage:
    """The running demo: the server and the parts the scenes turn."""

    port: int
    app: TideGateMiddleware
    switch: MaintenanceSwitch  # the server's, polling the state file
    operator: MaintenanceSwitch  # what `tidegate maintenance on` uses
    inventory: Inventory
    breaker: CircuitBreaker
    transitions: list[str] = field(default_factory=list)
    # The consecutive failures that opened the breaker the first time, as it counted them.
    opened_after: int | None = None

    def on_transition(self, breaker: CircuitBreaker, old: str, new: str) -> None:
        self.transitions.append(new)
        if new == "open" and self.opened_after is None:
            self.opened_after = breaker.failure_count

    def wait(self, condition: Callable[[], bool], what: str) -> float:
        """Seconds until ``condition()`` held (at most 5)."""
        start = time.perf_counter()
        while not condition():
            if time.perf_counter() - start > 5:
                raise RuntimeError(f"the demo server did not see {what} within 5 s")
            time.sleep(0.005)
        return time.perf_counter() - start


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _ms(latency: dict[str, float] | None) -> str:
    return "-" if latency is None else f"{latency['p50']:.0f} ms"


def normal_load(stage: Stage) -> Scene:
    seen, _ = burst(stage.port, "/slow?ms=20", clients=4, each=10)
    row = Row("normal load", seen, readiness(stage.port))
    s = row.summary()
    return Scene(
        1,
        "normal load",
        [row],
        f"{s['ok']} of {s['requests']} served in {_ms(s['ok_ms'])}: "
        f"4 clients stay under the limit of {LIMIT}.",
    )


def overload(stage: Stage) -> Scene:
    seen, health = burst(
        stage.port,
        f"/slow?ms={OVERLOAD_WORK_MS}",
        clients=3 * LIMIT,
        each=3,
        during=lambda: readiness(stage.port),
    )
    row = Row("overload", seen, health or "")
    s = row.summary()
    low, high = s["retry_after"] or (0, 0)
    return Scene(
        2,
        "overload",
        [row],
        f"{s['unavailable'].get('overload', 0)} of {s['requests']} shed in "
        f"{_ms(s['unavailable_ms'])}, not queued behind {_ms(s['ok_ms'])} of work; "
        f"Retry-After {low}-{high} s; at most {stage.app.gate.peak} in the app.",
    )


def maintenance(stage: Stage) -> Scene:
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=15)
    stage.operator.enable(message="Upgrading the database", until=until)
    reached = stage.wait(lambda: stage.switch.active, "maintenance")
    seen, health = burst(stage.port, "/", clients=4, each=5, during=lambda: readiness(stage.port))
    on = Row("maintenance on", seen, health or "")
    stage.operator.disable()
    stage.wait(lambda: not stage.switch.active, "maintenance off")
    seen, _ = burst(stage.port, "/", clients=4, each=5)
    off = Row("maintenance off", seen, readiness(stage.port))
    return Scene(
        3,
        "maintenance",
        [on, off],
        f"the app saw the state file change after {reached * 1000:.0f} ms (it looks every "
        f"{stage.switch.poll_interval * 1000:.0f} ms); Retry-After counts down to "
        f"{until:%H:%M} UTC; /health stays 200.",
    )


def dependency(stage: Stage) -> Scene:
    stage.inventory.down = True
    seen, _ = burst(stage.port, "/stock", clients=4, each=6)
    down = Row("dependency down", seen, readiness(stage.port))
    stage.inventory.down = False
    steps = max(1, math.ceil(RESET_TIMEOUT / 0.1)) + 4
    seen, _ = burst(stage.port, "/stock", clients=4, each=steps, pause=0.1)
    back = Row("dependency back", seen, readiness(stage.port))
    s = down.summary()
    opened = stage.opened_after or 0
    # Calls already running when the breaker opened still fail slowly: say so, not that
    # every 500 took part in opening it.
    late = s["other"] - opened
    under_way = f" ({late} more {'was' if late == 1 else 'were'} under way)" if late > 0 else ""
    return Scene(
        4,
        "dependency",
        [down, back],
        f"{_count(opened, 'slow 500')} in a row opened the breaker{under_way}, then 503 "
        f"dependency in {_ms(s['unavailable_ms'])}; breaker {' -> '.join(stage.transitions)}.",
    )


def drain(stage: Stage) -> Scene:
    stage.operator.drain()
    stage.wait(lambda: stage.switch.draining, "drain")
    seen, health = burst(
        stage.port, "/slow?ms=20", clients=4, each=5, during=lambda: readiness(stage.port)
    )
    row = Row("draining", seen, health or "")
    stage.operator.undrain()
    stage.wait(lambda: not stage.switch.draining, "the end of drain")
    s = row.summary()
    return Scene(
        5,
        "drain",
        [row],
        f"/health said {row.health}, so the load balancer stops sending, while "
        f"{s['ok']} of {s['requests']} requests were still served.",
    )


SCENES = (normal_load, overload, maintenance, dependency, drain)


# -- running it ----------------------------------------------------------------------------


@dataclass
class _Running:
    server: _Server
    thread: threading.Thread


def _serve(app: TideGateMiddleware) -> _Running:
    server = _Server((HOST, 0), _QuietHandler)
    server.set_app(app)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="tidegate-demo-server"
    )
    thread.start()
    return _Running(server, thread)


def _stop(running: _Running) -> None:
    running.server.shutdown()
    running.server.server_close()
    running.thread.join()


def _stage(folder: Path) -> tuple[Stage, _Running]:
    state = folder / "maintenance.json"
    switch = MaintenanceSwitch(state, env_var=None, poll_interval=0.1)
    inventory = Inventory()
    breaker = CircuitBreaker("inventory", failure_threshold=3, reset_timeout=RESET_TIMEOUT)
    health = HealthChecks()
    health.add_breaker(breaker)
    app = TideGateMiddleware(
        ShopApp(inventory, breaker),
        limit=LIMIT,
        retry_after=1,
        retry_jitter=2,
        maintenance=switch,
        health=health,
    )
    running = _serve(app)
    stage = Stage(
        port=running.server.server_address[1],
        app=app,
        switch=switch,
        operator=MaintenanceSwitch(state, env_var=None),
        inventory=inventory,
        breaker=breaker,
    )
    stage.transitions.append(breaker.state)
    breaker.add_listener(stage.on_transition)
    return stage, running


class _Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


@contextmanager
def _logged() -> Iterator[list[str]]:
    """What the ``tidegate`` logger says meanwhile, collected for the report (not printed)."""
    logger = logging.getLogger("tidegate")
    handler = _Log()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.level, logger.propagate = saved


def play() -> dict[str, Any]:
    """Run every scene against a fresh server; what clients saw, as a JSON-ready dict."""
    started = time.perf_counter()
    threads_before = threading.active_count()
    folder = Path(tempfile.mkdtemp(prefix="tidegate-demo-"))
    scenes: list[Scene] = []
    try:
        with _logged() as log:
            stage, running = _stage(folder)
            try:
                scenes = [scene(stage) for scene in SCENES]
            finally:
                _stop(running)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "limit": LIMIT,
        "peak_in_flight": stage.app.gate.peak,
        "scenes": [
            {
                "number": scene.number,
                "title": scene.title,
                "takeaway": scene.takeaway,
                "rows": [row.summary() for row in scene.rows],
            }
            for scene in scenes
        ],
        "log": log,
        "state_file": str(folder / "maintenance.json"),
        "state_file_removed": not folder.exists(),
        "threads_left": threading.active_count() - threads_before,
        "seconds": round(time.perf_counter() - started, 2),
    }


HEADERS = (
    "scene",
    "reqs",
    "200",
    "503s (reason)",
    "other",
    "Retry-After",
    "200 p50/p99",
    "503 p50/p99",
    "/health",
)
_RIGHT = {1, 2, 4}


def _pair(latency: dict[str, float] | None) -> str:
    return "-" if latency is None else f"{latency['p50']:.0f}/{latency['p99']:.0f} ms"


def _cells(number: int, first: bool, row: dict[str, Any]) -> tuple[str, ...]:
    refused = ", ".join(f"{count} {reason}" for reason, count in row["unavailable"].items())
    waits = row["retry_after"]
    if waits is None:
        wait = "-"
    elif waits[0] == waits[1]:
        wait = f"{waits[0]} s"
    else:
        wait = f"{waits[0]}-{waits[1]} s"
    return (
        f"{number if first else ' '} {row['label']}",
        str(row["requests"]),
        str(row["ok"]),
        refused or "0",
        str(row["other"]),
        wait,
        _pair(row["ok_ms"]),
        _pair(row["unavailable_ms"]),
        row["health"],
    )


def table(report: dict[str, Any]) -> str:
    """The report as an aligned plain-text table followed by one takeaway per scene."""
    lines = [
        tuple(_cells(scene["number"], index == 0, row) for index, row in enumerate(scene["rows"]))
        for scene in report["scenes"]
    ]
    body = [cells for scene in lines for cells in scene]
    widths = [max(len(r[i]) for r in (HEADERS, *body)) for i in range(len(HEADERS))]

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(width) if i in _RIGHT else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [render(HEADERS), render(tuple("-" * w for w in widths))]
    out += [render(cells) for cells in body]
    out.append("")
    out += [
        f"{scene['number']} {scene['title']}: {scene['takeaway']}" for scene in report["scenes"]
    ]
    return "\n".join(out)


def run(*, json_output: bool = False) -> int:
    """``tidegate demo``: play the scenes and print what clients saw. Returns the exit code."""
    if not json_output:
        print(
            f"tidegate demo: a WSGI app on {HOST} behind TideGateMiddleware(limit={LIMIT}) with\n"
            "a maintenance state file and a circuit breaker; real clients, real sockets.\n",
            flush=True,
        )
    try:
        report = play()
    except (OSError, RuntimeError) as exc:
        print(f"tidegate demo: error: {exc}", file=sys.stderr)
        return 1
    if json_output:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
        if report["log"]:
            print("\nthe tidegate logger said:")
            print("\n".join(f"  {line}" for line in report["log"]))
        print(
            f"\nlatency: p50/p99 of what clients waited. Done in {report['seconds']} s; "
            "server stopped, state file removed."
        )
    return 0
