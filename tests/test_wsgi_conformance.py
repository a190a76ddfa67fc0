"""Every kind of response TideGateMiddleware gives is valid WSGI and valid HTTP, as software
nobody here wrote sees it.

Each kind (admitted, streamed, overload, maintenance, dependency, draining readiness, health),
as GET and HEAD, asking for JSON and for HTML, is driven through Werkzeug's test client and
through ``wsgiref.validate.validator`` on both sides of the middleware, run by wsgiref's own
server handler. The 503 kinds are also served by real Gunicorn, waitress and uWSGI on loopback
ports and read by ``http.client``: status, the headers the 503 contract names (Retry-After,
Cache-Control: no-store, Content-Type, Content-Length), and a body exactly Content-Length long
(none for HEAD).

The app is ``gunicorn_apps.conformance_app``, the one the real servers serve.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.handlers import SimpleHandler
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
from conftest import require
from gunicorn_apps import (
    CONFORMANCE_RETRY_AFTER,
    DEPENDENCY_RESET_TIMEOUT,
    STATE_ENV,
    conformance_app,
)
from servers import HOST, SERVERS, ServerProcess, missing, wait_for
from werkzeug.test import Client

from tidegate import (
    CapacityGate,
    CircuitOpenError,
    HealthChecks,
    MaintenanceSwitch,
    drain_process,
    undrain_process,
)
from tidegate.wsgi import TideGateMiddleware

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ACCEPTS = {"json": "application/json", "html": BROWSER}
#: The overload 503's Retry-After: the middleware's ``retry_after``, in process as in the
#: real servers' ``conformance_application``.
OVERLOAD_RETRY_AFTER = str(CONFORMANCE_RETRY_AFTER)
MAINTENANCE_RETRY_AFTER = 120
#: ``gunicorn_apps.dependency`` is opened afresh on every call: a full ``reset_timeout``.
DEPENDENCY_RETRY_AFTER = str(DEPENDENCY_RESET_TIMEOUT)


@dataclass(frozen=True)
class Kind:
    """One kind of response: where to ask and what a client must see."""

    name: str
    target: str
    status: int
    #: The body's ``reason`` for a 503; ``None`` for a 200.
    reason: str | None = None
    retry_after: str | None = None
    #: Whether a browser gets the HTML page (the 503s tidegate renders; health is JSON only).
    page: bool = False
    #: For a 200: the body, or the JSON document, the client must get.
    body: bytes | None = None
    document: Any = None

    @property
    def health(self) -> bool:
        return self.target.startswith("/health")

    def __str__(self) -> str:
        return self.name


ADMITTED = Kind("admitted", "/work?ms=0", 200, body=b"done")
STREAMED = Kind("streamed", "/stream?chunks=3&ms=0", 200, body=b"tick\n" * 3)
OVERLOAD = Kind("overload", "/work?ms=0", 503, "overload", OVERLOAD_RETRY_AFTER, page=True)
MAINTENANCE = Kind(
    "maintenance", "/work?ms=0", 503, "maintenance", str(MAINTENANCE_RETRY_AFTER), page=True
)
DEPENDENCY = Kind("dependency", "/dependency", 503, "dependency", DEPENDENCY_RETRY_AFTER, page=True)
#: The app started a 200 response, then met the open breaker: the 503 replaces it.
DEPENDENCY_LATE = Kind(
    "dependency after start_response",
    "/dependency-late",
    503,
    "dependency",
    DEPENDENCY_RETRY_AFTER,
    page=True,
)
#: Readiness while draining asks clients back after the maintenance switch's Retry-After.
DRAINING = Kind(
    "draining readiness",
    "/health",
    503,
    "draining",
    str(MaintenanceSwitch(env_var=None).status().retry_after.delay()),
)
READY = Kind("readiness", "/health", 200, document={"status": "ready"})
#: Failing readiness asks clients back once the cached result expires.
HEALTH_CACHE_TTL = 3.0
NOT_READY = Kind(
    "failing readiness", "/health", 503, "check_failed", str(math.ceil(HEALTH_CACHE_TTL))
)
LIVE = Kind("liveness", "/health/live", 200, document={"status": "alive"})

KINDS = (
    ADMITTED,
    STREAMED,
    OVERLOAD,
    MAINTENANCE,
    DEPENDENCY,
    DEPENDENCY_LATE,
    DRAINING,
    READY,
    NOT_READY,
    LIVE,
)
UNAVAILABLE = tuple(kind for kind in KINDS if kind.status == 503 and kind is not NOT_READY)


@dataclass
class Seen:
    """A response as a client saw it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: Bytes the server sent past the end of the response (there must be none).
    trailing: bytes = b""

    def header(self, name: str) -> str | None:
        """The value of the header ``name``, which must not appear more than once."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(values) <= 1, f"{name} appears {len(values)} times: {self}"
        return values[0] if values else None


def check(kind: Kind, method: str, accept: str, seen: Seen) -> None:
    """What every client must see for ``kind``, asked with ``method`` and ``accept``."""
    assert seen.status == kind.status, seen
    head = method == "HEAD"
    if kind.status == 200 and not kind.health:
        # The app's own response, passed through as it is: whether it leaves out the body
        # for HEAD is the app's business (real servers drop it, wsgiref sends it).
        assert seen.body + seen.trailing in ((b"", kind.body) if head else (kind.body,)), seen
        return
    assert seen.trailing == b"", seen
    if head:
        assert seen.body == b"", seen
    else:
        assert seen.body, seen
    length = seen.header("Content-Length")
    assert length is not None and length.isdigit(), seen
    if not head:
        assert int(length) == len(seen.body), seen
    assert seen.header("Cache-Control") == "no-store", seen
    html = kind.page and accept == "html"
    expected_type = "text/html; charset=utf-8" if html else "application/json"
    assert seen.header("Content-Type") == expected_type, seen
    if kind.status == 200:
        if not head:
            assert json.loads(seen.body).items() >= kind.document.items()
        return
    assert seen.header("Retry-After") == kind.retry_after, seen
    if head:
        return
    if html:
        page = seen.body.decode()
        assert page.lower().startswith("<!doctype html>"), page
        assert f"retry after {kind.retry_after} s" in page, page
        return
    document = json.loads(seen.body)
    assert document["reason"] == kind.reason
    assert document["retry_after"] == int(kind.retry_after or "")
    if not kind.health:
        assert document["error"] == "Service Unavailable"


def check_kind(kind: Kind, accept: str, fetch: Callable[[str], Seen]) -> None:
    """GET and HEAD of ``kind`` as a client asking for ``accept`` sees them; ``fetch(method)``
    sends one request."""
    got = fetch("GET")
    check(kind, "GET", accept, got)
    head = fetch("HEAD")
    check(kind, "HEAD", accept, head)
    if kind.status == 503 or kind.health:
        assert head.header("Content-Length") == str(len(got.body)), "HEAD says what GET sends"


def cases(kinds: tuple[Kind, ...]) -> list[Any]:
    return [
        pytest.param(kind, accept, id=f"{kind}-{accept}") for kind in kinds for accept in ACCEPTS
    ]


# -- in-process: the middleware set up to give each kind ----------------------------------


@contextmanager
def arranged(kind: Kind, wrap: Callable[[Any], Any] = lambda app: app) -> Iterator[Any]:
    """A middleware around ``wrap(conformance_app)`` that answers ``kind.target`` with
    ``kind``; whatever was changed to get there is undone afterwards."""
    gate = CapacityGate(1)
    switch = MaintenanceSwitch(env_var=None)
    health = HealthChecks(cache_ttl=HEALTH_CACHE_TTL)
    if kind is NOT_READY:
        health.add("db", lambda: False)
    with ExitStack() as undo:
        if kind is OVERLOAD:
            permit = gate.try_acquire()
            assert permit is not None
            undo.callback(permit.release)
        if kind is MAINTENANCE:
            switch.enable(message="Upgrading", retry_after=MAINTENANCE_RETRY_AFTER)
        if kind is DRAINING:
            drain_process()
            undo.callback(undrain_process)
        yield TideGateMiddleware(
            wrap(conformance_app),
            gate=gate,
            maintenance=switch,
            health=health,
            retry_after=CONFORMANCE_RETRY_AFTER,
        )
        assert gate.in_flight == (1 if kind is OVERLOAD else 0), "a permit leaked"


def werkzeug_client(app: Any, method: str, target: str, accept: str) -> Seen:
    client = Client(app)
    with client.open(target, method=method, headers={"Accept": ACCEPTS[accept]}) as response:
        return Seen(response.status_code, list(response.headers.items()), response.get_data())


class _Handler(SimpleHandler):
    # The request's environ only, not this process's environment variables.
    os_environ: Mapping[str, str] = {}


@dataclass
class _Socket:
    data: bytes

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def parse(raw: bytes, method: str) -> Seen:
    """An HTTP/1.x response read by ``http.client`` (which also checks Content-Length)."""
    response = http.client.HTTPResponse(_Socket(raw), method=method)  # type: ignore[arg-type]
    response.begin()
    body = response.read()
    _, _, rest = raw.partition(b"\r\n\r\n")
    return Seen(response.status, response.headers.items(), body, rest[len(body) :])


def wsgiref_validated(app: Any, method: str, target: str, accept: str) -> Seen:
    """The request run by wsgiref's server handler, with ``validator`` between it and the app;
    the handler checks start_response as PEP 3333 asks, iterates and closes the body."""
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_ACCEPT": ACCEPTS[accept],
    }
    setup_testing_defaults(environ)
    output, errors = io.BytesIO(), io.StringIO()
    handler = _Handler(io.BytesIO(), output, errors, environ, multithread=True)
    handler.run(validator(app))
    assert errors.getvalue() == "", errors.getvalue()
    return parse(output.getvalue(), method)


@pytest.mark.parametrize(("kind", "accept"), cases(KINDS))
def test_werkzeug_test_client_sees_every_kind(kind: Kind, accept: str) -> None:
    with arranged(kind) as app:
        check_kind(kind, accept, lambda method: werkzeug_client(app, method, kind.target, accept))


@pytest.mark.parametrize(("kind", "accept"), cases(KINDS))
def test_every_kind_is_valid_wsgi_on_both_sides(kind: Kind, accept: str) -> None:
    with arranged(kind, wrap=validator) as app:
        check_kind(kind, accept, lambda method: wsgiref_validated(app, method, kind.target, accept))


def test_an_open_breaker_after_the_headers_went_out_reaches_the_server_as_itself() -> None:
    """PEP 3333: once headers are sent the response cannot change, so the server must get the
    app's own error (here from wsgiref's start_response, which re-raises it) and abort."""

    def app(environ: Any, start_response: Any) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        return conformance_app({**environ, "PATH_INFO": "/dependency"}, start_response)

    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/"}
    setup_testing_defaults(environ)
    output, errors = io.BytesIO(), io.StringIO()
    middleware = TideGateMiddleware(app, limit=1)
    _Handler(io.BytesIO(), output, errors, environ).run(middleware)
    assert middleware.gate.in_flight == 0
    assert output.getvalue().startswith(b"HTTP/1.0 200 OK\r\n")
    assert output.getvalue().endswith(b"\r\n\r\npartial")
    assert f"{CircuitOpenError.__name__}: " in errors.getvalue(), errors.getvalue()
    assert "No active exception" not in errors.getvalue()


# -- real servers --------------------------------------------------------------------------


@dataclass
class Served:
    """A real server running ``conformance_application``, and its state file."""

    server: ServerProcess
    state: Path
    switch: MaintenanceSwitch = field(init=False)

    def __post_init__(self) -> None:
        self.switch = MaintenanceSwitch(self.state, env_var=None)

    def exchange(self, method: str, target: str, accept: str) -> Seen:
        """One request on its own connection, the response read to the end of the stream."""
        request = (
            f"{method} {target} HTTP/1.1\r\nHost: {HOST}:{self.server.port}\r\n"
            f"Accept: {ACCEPTS[accept]}\r\nConnection: close\r\n\r\n"
        )
        deadline = time.monotonic() + 10
        chunks = []
        with socket.create_connection((HOST, self.server.port), timeout=5) as sock:
            sock.sendall(request.encode("latin-1"))
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                assert time.monotonic() < deadline, "the server never closed the connection"
        return parse(b"".join(chunks), method)

    def status(self, target: str) -> int:
        return self.exchange("GET", target, "json").status

    @contextmanager
    def giving(self, kind: Kind) -> Iterator[None]:
        """Makes the server answer ``kind.target`` with ``kind``, and undoes it afterwards."""
        if kind is OVERLOAD:
            assert self.status("/_hold") == 200
            try:
                yield
            finally:
                assert self.status("/_release") == 200
        elif kind is MAINTENANCE:
            self.switch.enable(message="Upgrading", retry_after=MAINTENANCE_RETRY_AFTER)
            try:
                self.until(kind.target, 503)
                yield
            finally:
                self.switch.disable()
                self.until(kind.target, 200)
        elif kind is DRAINING:
            self.switch.drain()
            try:
                self.until(kind.target, 503)
                yield
            finally:
                self.switch.undrain()
                self.until(kind.target, 200)
        else:
            yield

    def until(self, target: str, status: int) -> None:
        wait_for(lambda: self.status(target), lambda seen: seen == status, what=f"{status}")


GUNICORN_KEEPS_OLD_HEADERS = (
    "Gunicorn keeps the headers of the response start_response replaced with exc_info"
)


def conformance_server(name: str, **options: Any) -> ServerProcess:
    """The server ``name`` serving ``conformance_application`` with a few threads."""
    require(missing(name))
    if name == "gunicorn":
        options["threads"] = 4
    else:
        options["ready_path"] = "/health/live"
    return SERVERS[name]("gunicorn_apps:conformance_application", **options)


@pytest.fixture(scope="module", params=sorted(SERVERS))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    name: str = request.param
    state = tmp_path_factory.mktemp(name) / "state.json"
    with conformance_server(name, env={STATE_ENV: str(state)}) as server:
        yield Served(server, state)
        output = server.output()
    assert "Traceback" not in output, output


@pytest.mark.server
@pytest.mark.parametrize("kind", UNAVAILABLE, ids=str)
def test_real_servers_send_every_503_whole(
    served: Served, kind: Kind, request: pytest.FixtureRequest
) -> None:
    if served.server.name == "gunicorn" and kind is DEPENDENCY_LATE:
        # PEP 3333 lets exc_info replace the headers of a response not yet sent; Gunicorn
        # appends the new ones to the old instead, so the client gets two Content-Types.
        request.applymarker(pytest.mark.xfail(strict=True, reason=GUNICORN_KEEPS_OLD_HEADERS))
    with served.giving(kind):
        for accept in ACCEPTS:
            try:
                check_kind(
                    kind,
                    accept,
                    lambda method, accept=accept: served.exchange(method, kind.target, accept),
                )
            except AssertionError as failure:
                raise AssertionError(f"{served.server.name}, {accept}: {failure}") from None
    assert served.status("/work?ms=0") == 200, "the server is back to serving"


@pytest.mark.server
@pytest.mark.parametrize("name", sorted(SERVERS))
def test_every_server_stops_with_all_its_processes(name: str) -> None:
    with conformance_server(name) as server:
        group = server.pid
        assert server.fetch("/health/live").status == 200
        os.killpg(group, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
