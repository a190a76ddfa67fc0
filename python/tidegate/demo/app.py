"""The demo's stage: a small shop app behind :class:`~tidegate.wsgi.TideGateMiddleware`, served
by the standard library's threaded WSGI server on 127.0.0.1, and the parts the scenes turn."""

from __future__ import annotations

import queue
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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

HOST = "127.0.0.1"
LIMIT = 8
#: How long the fake dependency takes to fail when it is down (a timeout, say).
FAILURE_SECONDS = 0.1
RESET_TIMEOUT = 0.8
#: Where the shop serves its metrics; the demo ends by reading a few.
METRICS_PATH = "/metrics"
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


# -- the stage -----------------------------------------------------------------------------


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


@dataclass
class Running:
    """The server and the thread serving it, for :func:`stop`."""

    server: _Server
    thread: threading.Thread


def _serve(app: TideGateMiddleware) -> Running:
    server = _Server((HOST, 0), _QuietHandler)
    server.set_app(app)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="tidegate-demo-server"
    )
    thread.start()
    return Running(server, thread)


def stop(running: Running) -> None:
    """Stop serving and join every thread the server started."""
    running.server.shutdown()
    running.server.server_close()
    running.thread.join()


def start(folder: Path) -> tuple[Stage, Running]:
    """Serve a fresh shop whose maintenance state file lives in ``folder``."""
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
        metrics_path=METRICS_PATH,
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


#: The database pool of the last scene: this many connections, each query this long.
POOL_SIZE = 4
POOL_QUERY_MS = 20


class PoolApp:
    """An app whose every request runs one query on a pool of ``POOL_SIZE`` connections: it
    can do ``POOL_SIZE`` requests at once, and more only wait for a connection."""

    def __init__(self) -> None:
        self.pool: queue.Queue[int] = queue.Queue()
        for connection in range(POOL_SIZE):
            self.pool.put(connection)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        connection = self.pool.get()
        try:
            time.sleep(POOL_QUERY_MS / 1000)
        finally:
            self.pool.put(connection)
        return _reply(start_response, "200 OK", b"queried")


def serve_auto() -> tuple[TideGateMiddleware, Running]:
    """The pool app behind ``limit="auto"``, nothing else configured, on a port of its own."""
    app = TideGateMiddleware(PoolApp(), limit="auto", maintenance=False)
    return app, _serve(app)
