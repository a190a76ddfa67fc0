"""Shared fixtures: WSGI apps that record what the middleware does to them, a tiny
in-process WSGI server loop that iterates and closes bodies the way real servers do, real
Gunicorn servers (see ``servers.py``), a real Redis (``redis_server.py``), and
:func:`hammer`, which runs one callable from many threads at once for the concurrency
tests."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pytest
from hypothesis import settings
from redis_server import RedisServer, redis_missing
from servers import GunicornServer

T = TypeVar("T")

# `--hypothesis-profile=long` for a long property run; CI uses Hypothesis's default.
settings.register_profile("long", max_examples=20_000)


class Boom(Exception):
    """An error the test apps raise on purpose."""


@dataclass
class Reply:
    status: str
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> int:
        return int(self.status.split()[0])

    def json(self) -> Any:
        return json.loads(self.body)


def environ_for(path: str = "/", method: str = "GET", **extra: str) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
    }
    environ.update(extra)
    return environ


def drive(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """One request the way a server makes it: call, iterate, close. The status, the headers
    as given and the body."""
    captured: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured[:] = [status, headers]
        return lambda data: None

    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    status, headers = captured
    return status, headers, data


def call(app: Any, path: str = "/", method: str = "GET", **extra: str) -> Reply:
    """Runs one request the way a server does: call, iterate, close."""
    status, headers, data = drive(app, environ_for(path, method, **extra))
    return Reply(status, dict(headers), data)


@dataclass
class RecordingApp:
    """A WSGI app whose behaviour is chosen by path, recording how many requests are inside it
    at once (a streamed body counts as inside until it is closed or exhausted).

    ``/`` answers at once; ``/stream`` yields three chunks; ``/raise`` raises before
    ``start_response``; ``/raise-midway`` yields a chunk then raises; ``/wait`` blocks on
    ``self.gate_open`` (an Event) before answering.
    """

    inside: int = 0
    worst: int = 0
    calls: int = 0
    closed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate_open: threading.Event = field(default_factory=threading.Event)

    def _enter(self) -> None:
        with self.lock:
            self.calls += 1
            self.inside += 1
            self.worst = max(self.worst, self.inside)

    def _leave(self) -> None:
        with self.lock:
            self.inside -= 1

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        self._enter()
        if path == "/raise":
            self._leave()
            raise Boom("before start_response")
        if path in ("/stream", "/raise-midway"):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return self._stream(raise_midway=path == "/raise-midway")
        try:
            if path == "/wait":
                self.gate_open.wait(10)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        finally:
            self._leave()

    def _stream(self, *, raise_midway: bool) -> Iterable[bytes]:
        return _StreamBody(self, raise_midway)


class _StreamBody:
    """A streamed body with ``close()``: the request stays inside the app until it is closed."""

    def __init__(self, app: RecordingApp, raise_midway: bool) -> None:
        self.app = app
        self.raise_midway = raise_midway
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"one "
        if self.raise_midway:
            raise Boom("midway")
        yield b"two "
        yield b"three"

    def close(self) -> None:
        if not self.done:
            self.done = True
            with self.app.lock:
                self.app.closed += 1
            self.app._leave()


@pytest.fixture
def recording_app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def start_gunicorn() -> Iterator[Callable[..., GunicornServer]]:
    """Starts real Gunicorn servers: ``start_gunicorn(app, **GunicornServer options)``, each ready
    when returned; all of them are stopped at teardown, whatever the test did."""
    with ExitStack() as stack:

        def start(app: str, **options: Any) -> GunicornServer:
            return stack.enter_context(GunicornServer(app, **options))

        yield start


# -- many threads at once -----------------------------------------------------------------------


@dataclass
class Hammered(Generic[T]):
    """What :func:`hammer` saw: every call's result (in no particular order) and how many calls
    each thread made."""

    results: list[T]
    calls: list[int]

    @property
    def total(self) -> int:
        return sum(self.calls)


def hammer(
    work: Callable[[int, int], T],
    *,
    threads: int,
    times: int | None = None,
    seconds: float | None = None,
    during: Callable[[], object] | None = None,
    join_timeout: float = 60.0,
) -> Hammered[T]:
    """Calls ``work(thread, turn)`` from ``threads`` threads released together and returns what
    they saw. Each thread makes ``times`` calls; without ``times``, it calls until ``during``
    has returned. ``seconds`` caps either (at least one of ``times`` and ``seconds`` is
    required).

    ``during`` runs in the calling thread once the threads are released. The first exception
    in any thread (or in ``during``) stops them all; once every thread is joined (within
    ``join_timeout`` seconds, or the test fails) their exceptions fail the test, the first one
    chained, so nothing a thread raised goes unseen.
    """
    if times is None and seconds is None:
        raise ValueError("times or seconds: every load loop is bounded")
    start = threading.Barrier(threads + 1)
    stop = threading.Event()
    lock = threading.Lock()
    results: list[T] = []
    errors: list[BaseException] = []
    calls = [0] * threads

    def run(thread: int) -> None:
        mine: list[T] = []
        try:
            start.wait(timeout=10)
            deadline = None if seconds is None else time.monotonic() + seconds
            turn = 0
            while not stop.is_set() and (times is None or turn < times):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                mine.append(work(thread, turn))
                turn += 1
                calls[thread] = turn
        except BaseException as exc:
            stop.set()
            with lock:
                errors.append(exc)
        finally:
            with lock:
                results.extend(mine)

    workers = [
        threading.Thread(target=run, args=(n,), name=f"hammer-{n}", daemon=True)
        for n in range(threads)
    ]
    for worker in workers:
        worker.start()
    try:
        start.wait(timeout=10)
        if during is not None:
            during()
        if times is None:
            stop.set()
    except BaseException:
        start.abort()
        stop.set()
        raise
    finally:
        deadline = time.monotonic() + join_timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(worker.is_alive() for worker in workers)
    assert stuck == 0, f"{stuck} of {threads} threads still running after {join_timeout}s"
    if errors:
        shown = "; ".join(repr(error) for error in errors[:3])
        raise AssertionError(f"{len(errors)} of {threads} threads raised: {shown}") from errors[0]
    return Hammered(results, calls)


# -- values that break naive rendering ---------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    """A dict nested ``depth`` deep: ``{'a': {'a': ...}}``."""
    document: dict[str, Any] = {}
    inner = document
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return document


class Unrepresentable:
    """An object whose ``repr`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class UnprintableError(Exception):
    """An exception whose ``str`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str")


# -- what an operator may write into a 503 ------------------------------------------------------

#: Text that would run script if it reached a page unescaped.
HOSTILE = "<script>alert(\"x\")</script> & 'quoted' <img src=x onerror=alert(1)>"


def assert_inert(page: str) -> None:
    """``page`` shows :data:`HOSTILE` as text: none of its markup reached the page."""
    for raw in ("<script", "<img", "onerror=alert(1)>", '"x"'):
        assert raw not in page, f"{raw!r} reached the page unescaped"
    assert "&lt;script&gt;" in page


#: Links that are not a web page on a named host nor a path on this site. The first ones
#: run script; ``//host``, and what browsers turn into it (``\\`` read as ``/``, tabs and
#: newlines dropped), send the reader to another host.
BAD_STATUS_URLS = [
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    " javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:x",
    "status.example",
    "//evil.example",
    "//evil.example/status",
    "/\\evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "\\\\evil.example",
    "https:\\\\evil.example",
    "https:evil.example",
    "http:///evil.example",
    "https://",
    "https://status.example:port/",
    "ftp://status.example",
    "/status\x00",
]

GOOD_STATUS_URLS = [
    "https://status.example",
    "HTTP://status.example",
    "HTTPS://Status.Example/now?x=1#top",
    "https://[2001:db8::1]:8443/status",
    "/status",
    "/",
    "/status//history",
]


def require(why: str | None) -> None:
    """Goes on when ``why`` (the reason a server or tool is missing) is ``None``; otherwise
    skips the test, saying why, or under ``CI`` fails it: there every server must run, and a
    missing one is a broken set-up, not a reason to skip."""
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def need_redis() -> None:
    """Skips the test where no ``redis-server`` is installed, saying how to install it (fails
    under ``CI``)."""
    require(redis_missing())


def seconds_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not seen within {timeout}s")
        time.sleep(0.002)
    return time.monotonic() - start


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` of the test's own on a loopback port, stopped afterwards."""
    need_redis()
    with RedisServer() as server:
        yield server
