"""The demo's stage: a small shop app behind :class:`~tidegate.wsgi.TideGateMiddleware`, served
by the standard library's threaded WSGI server on 127.0.0.1 (or the same shop in ASGI behind
:class:`~tidegate.asgi.TideGateMiddleware`, served by Uvicorn or a minimal asyncio server), and
the parts the scenes turn."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from tidegate._policy import PolicyParts
from tidegate._tidegate import MaintenanceSwitch
from tidegate.asgi import ASGIApp
from tidegate.asgi import TideGateMiddleware as AsgiMiddleware
from tidegate.breaker import CircuitBreaker
from tidegate.demo.servers import Running, serve_asgi, serve_wsgi
from tidegate.health import HealthChecks
from tidegate.wsgi import TideGateMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

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

    async def fetch_async(self) -> str:
        """:meth:`fetch`, waiting without blocking the event loop."""
        if self.down:
            await asyncio.sleep(FAILURE_SECONDS)
            raise ConnectionError("inventory: timed out")
        await asyncio.sleep(0.005)
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


class AsgiShopApp:
    """:class:`ShopApp` as an ASGI app: the same routes, the waiting done with ``await``."""

    def __init__(self, inventory: Inventory, breaker: CircuitBreaker) -> None:
        self.inventory = inventory
        self.breaker = breaker

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/":
            await _send(send, 200, b"hello")
        elif path == "/slow":
            values = parse_qs(scope["query_string"].decode("latin-1")).get("ms", ["100"])
            await asyncio.sleep(min(int(values[0]), 5000) / 1000)
            await _send(send, 200, b"done")
        elif path == "/stock":
            try:
                with self.breaker:
                    stock = await self.inventory.fetch_async()
            except ConnectionError:
                await _send(send, 500, b"inventory failed")
                return
            await _send(send, 200, stock.encode())
        else:
            await _send(send, 404, b"no such page")


async def _send(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _reply(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# -- the stage -----------------------------------------------------------------------------


@dataclass
class Stage:
    """The running demo: the server and the parts the scenes turn."""

    port: int
    app: PolicyParts
    switch: MaintenanceSwitch  # the server's, polling the state file
    operator: MaintenanceSwitch  # what `tidegate maintenance on` uses
    inventory: Inventory
    breaker: CircuitBreaker
    transitions: list[str] = field(default_factory=list)
    # The consecutive failures that opened the breaker the first time, as it counted them.
    opened_after: int | None = None
    #: The ASGI server serving the shop, or None for the WSGI shop.
    asgi: str | None = None

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


def stop(running: Running) -> None:
    """Stop serving and join every thread the server started."""
    running.close()


def start(folder: Path, *, asgi: str | None = None) -> tuple[Stage, Running]:
    """Serve a fresh shop whose maintenance state file lives in ``folder``: the WSGI shop
    behind :class:`tidegate.wsgi.TideGateMiddleware`, or with ``asgi`` (a name in
    :data:`~tidegate.demo.servers.ASGI_SERVERS`) the ASGI shop behind
    :class:`tidegate.asgi.TideGateMiddleware`, served by that server."""
    state = folder / "maintenance.json"
    switch = MaintenanceSwitch(state, env_var=None, poll_interval=0.1)
    inventory = Inventory()
    breaker = CircuitBreaker("inventory", failure_threshold=3, reset_timeout=RESET_TIMEOUT)
    health = HealthChecks()
    health.add_breaker(breaker)
    options: dict[str, Any] = {
        "limit": LIMIT,
        "retry_after": 1,
        "retry_jitter": 2,
        "maintenance": switch,
        "health": health,
        "metrics_path": METRICS_PATH,
    }
    app, running = _serve(
        ShopApp(inventory, breaker), AsgiShopApp(inventory, breaker), asgi, options
    )
    stage = Stage(
        port=running.port,
        app=app,
        switch=switch,
        operator=MaintenanceSwitch(state, env_var=None),
        inventory=inventory,
        breaker=breaker,
        asgi=asgi,
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


class AsgiPoolApp:
    """:class:`PoolApp` as an ASGI app: the pool an ``asyncio.Queue``, the query awaited."""

    def __init__(self) -> None:
        self.pool: asyncio.Queue[int] = asyncio.Queue()
        for connection in range(POOL_SIZE):
            self.pool.put_nowait(connection)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        connection = await self.pool.get()
        try:
            await asyncio.sleep(POOL_QUERY_MS / 1000)
        finally:
            self.pool.put_nowait(connection)
        await _send(send, 200, b"queried")


def serve_auto(asgi: str | None = None) -> tuple[PolicyParts, Running]:
    """The pool app behind ``limit="auto"``, nothing else configured, on a port of its own;
    with ``asgi`` the ASGI pool app, served by that server."""
    return _serve(PoolApp(), AsgiPoolApp(), asgi, {"limit": "auto", "maintenance": False})


def _serve(
    wsgi_app: WSGIApplication, asgi_app: ASGIApp, asgi: str | None, options: dict[str, Any]
) -> tuple[PolicyParts, Running]:
    """``wsgi_app`` behind tidegate with ``options``, served on a port of its own; with
    ``asgi``, ``asgi_app`` instead, served by that ASGI server."""
    if asgi is None:
        app = TideGateMiddleware(wsgi_app, **options)
        return app, serve_wsgi(app)
    gated = AsgiMiddleware(asgi_app, **options)
    return gated, serve_asgi(gated, asgi)
