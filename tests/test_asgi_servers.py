"""tidegate.asgi.TideGateMiddleware under real ASGI servers on loopback ports: Uvicorn,
Hypercorn and Gunicorn with Uvicorn workers, each serving a bare ASGI app, Starlette, FastAPI
and Django's ASGI application (``asgi_apps.py``, ``django_asgi.py``), driven by real clients
(``http.client`` and the ``websockets`` package).

- 32 concurrent clients against ``limit=4``: the app never has more than 4 requests inside (it
  counts them itself), every 503 is whole, and every permit comes back, also when clients hang
  up in the middle of a streamed body or of server-sent events.
- Three Gunicorn workers with Uvicorn workers on one state file: ``tidegate maintenance on``
  reaches all of them and ``off`` brings them all back.
- Websockets pass through the middleware by default; with ``gate_websockets=True`` a full gate
  refuses the handshake. All three servers offer the denial-response extension, so the client
  reads the 503 itself (the close code 1013 for servers without it is tested in process, in
  ``test_asgi.py``).

Under ``CI`` a server that is not installed fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from asgi_apps import GATE_WEBSOCKETS_ENV, PID_HEADER
from conftest import require
from gunicorn_apps import CHUNK, STATE_ENV
from servers import (
    ASGI_SERVERS,
    STATS_PATH,
    GunicornServer,
    Response,
    ServerProcess,
    missing,
    settled,
    until_served,
    wait_for,
)

pytestmark = pytest.mark.server

LIMIT = 4
CLIENTS = 32
APPS = {
    "bare": "asgi_apps:bare_application",
    "starlette": "asgi_apps:starlette_application",
    "fastapi": "asgi_apps:fastapi_application",
    "django": "django_asgi:application",
}
#: Django's ASGI application serves no websockets.
WEBSOCKET_APPS = ("bare", "starlette", "fastapi")
#: Long enough that no stream can end before the server notices its client is gone.
ABANDONED = {"stream": "/stream?chunks=400&ms=10", "sse": "/sse?events=400&ms=10"}
FIRST = {"stream": CHUNK, "sse": b"data: 0\n\n"}


def asgi_server(
    name: str, app: str, *, env: dict[str, str] | None = None, workers: int = 1
) -> ServerProcess:
    """The server ``name`` serving ``app`` with ``limit=LIMIT``."""
    require(missing(name))
    options: dict[str, Any] = {
        "env": {"TIDEGATE_TEST_LIMIT": str(LIMIT), **(env or {})},
        "startup_timeout": 30.0,
    }
    if name == "gunicorn-uvicorn":
        options["workers"] = workers
    else:
        options["ready_path"] = STATS_PATH
    return ASGI_SERVERS[name](APPS[app], **options)


def assert_full_503(
    reply: Response, reason: str = "overload", retry_after: str = "1", *, pid: bool = True
) -> None:
    headers = reply.headers
    # ASGI carries no reason phrase: Uvicorn writes the standard one, Hypercorn none.
    assert reply.status == 503 and reply.reason in ("Service Unavailable", ""), reply
    assert headers["Retry-After"] == retry_after
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(reply.body)
    if pid:
        assert headers[PID_HEADER], "the 503 went out through the app's outer layers"
    document = reply.json()
    assert document["error"] == "Service Unavailable"
    assert document["reason"] == reason
    assert document["retry_after"] == int(retry_after)
    assert isinstance(document["message"], str) and document["message"]


def assert_clean_log(server: ServerProcess) -> None:
    output = server.output()
    assert "Traceback" not in output, output
    assert "[ERROR]" not in output and "ERROR:" not in output, output


@pytest.fixture(
    scope="module",
    params=[(server, app) for server in sorted(ASGI_SERVERS) for app in APPS],
    ids=lambda param: "-".join(param),
)
def served(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    name, app = request.param
    with asgi_server(name, app) as server:
        yield server
        assert_clean_log(server)


def delta(after: dict[str, Any], before: dict[str, Any], name: str) -> int:
    difference: int = after[name] - before[name]
    return difference


def test_the_app_never_sees_more_than_the_limit(served: ServerProcess) -> None:
    before = settled(served)
    served_per_client = 2
    replies = until_served(
        served, "/work?ms=30", clients=CLIENTS, times=served_per_client, seconds=20
    )

    codes = Counter(reply.status for reply in replies)
    for reply in replies:
        if reply.status == 200:
            assert reply.body == b"done"
        else:
            assert_full_503(reply)
    assert codes[200] == CLIENTS * served_per_client
    assert codes[503] > 0, codes

    after = settled(served)
    assert delta(after, before, "admitted") == codes[200]
    assert delta(after, before, "rejected") == codes[503]
    assert delta(after, before, "entered") == codes[200], "a shed request reached the app"
    assert 2 <= after["worst"] <= LIMIT, after
    assert after["peak"] == LIMIT, "a 503 was sent, so the gate was full"
    assert after["in_flight"] == 0


class Stream:
    """A streamed response read up to its first chunk, then abandoned by the client."""

    def __init__(self, server: ServerProcess, kind: str = "stream") -> None:
        self.conn = server.connection()
        self.conn.request("GET", ABANDONED[kind])
        reply = self.conn.getresponse()
        self.status = reply.status
        if self.status == 200:
            first = FIRST[kind]
            assert reply.read(len(first)) == first
        else:
            body = reply.read()
            self.conn.close()
            assert_full_503(Response(reply.status, reply.reason, reply.headers, body))

    def close(self) -> None:
        self.hang_up(abort=False)

    def hang_up(self, *, abort: bool) -> None:
        """Closes the connection mid-body: a FIN, or with ``abort`` a RST."""
        sock = self.conn.sock
        if abort and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()


def test_clients_hanging_up_mid_stream_and_mid_sse_give_every_permit_back(
    served: ServerProcess,
) -> None:
    before = settled(served)
    per_client = 2
    barrier = threading.Barrier(CLIENTS)
    deadline = time.monotonic() + 20

    def client(index: int) -> Counter[int]:
        seen: Counter[int] = Counter()
        barrier.wait(timeout=10)
        while seen[200] < per_client:
            assert time.monotonic() < deadline, f"client {index} was never admitted: {seen}"
            stream = Stream(served, "sse" if (index + seen[200]) % 2 else "stream")
            seen[stream.status] += 1
            if stream.status == 200:
                stream.hang_up(abort=index % 4 >= 2)
            else:
                time.sleep(random.uniform(0.005, 0.02))
        return seen

    with ThreadPoolExecutor(CLIENTS) as pool:
        seen = sum(pool.map(client, range(CLIENTS)), Counter[int]())
    abandoned = CLIENTS * per_client
    assert seen[200] == abandoned

    after = settled(served)
    assert delta(after, before, "admitted") == abandoned
    assert delta(after, before, "rejected") == seen[503]
    assert delta(after, before, "streams_started") == abandoned
    assert delta(after, before, "streams_finished") == 0, "a stream outlived its client"
    assert delta(after, before, "streams_closed_early") == abandoned
    assert after["worst"] <= LIMIT

    # Every slot is free again: LIMIT streams are admitted at once, and the next is shed.
    held = [Stream(served, kind) for kind in ("stream", "sse") * (LIMIT // 2)]
    assert [stream.status for stream in held] == [200] * LIMIT
    assert Stream(served).status == 503
    for stream in held:
        stream.hang_up(abort=False)
    final = settled(served)
    assert delta(final, before, "admitted") == abandoned + LIMIT
    assert final["in_flight"] == 0


# -- maintenance across Gunicorn's Uvicorn workers ----------------------------------------------


def tidegate_command(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidegate", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def answers_by_worker(server: ServerProcess, pids: set[int], want: int) -> dict[int, int]:
    """Asks ``/work?ms=0`` on new connections until every worker in ``pids`` has answered
    ``want``; the last status each worker gave."""
    last: dict[int, int] = {}

    def probe() -> dict[int, int]:
        reply = server.fetch("/work?ms=0")
        last[int(reply.headers[PID_HEADER])] = reply.status
        if reply.status == 503:
            assert_full_503(reply, "maintenance", reply.headers["Retry-After"])
        return dict(last)

    return wait_for(
        probe,
        lambda seen: set(seen) == pids and set(seen.values()) == {want},
        timeout=20,
        interval=0.005,
        what=f"every worker answering {want}",
    )


def test_maintenance_on_one_state_file_reaches_every_uvicorn_worker(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    server = asgi_server("gunicorn-uvicorn", "starlette", env={STATE_ENV: str(state)}, workers=3)
    with server:
        assert isinstance(server, GunicornServer)
        pids = set(server.worker_pids())
        assert len(pids) == 3
        answers_by_worker(server, pids, 200)

        tidegate_command("maintenance", "on", "--state", str(state), "--message", "Upgrading")
        answers_by_worker(server, pids, 503)
        replies = [server.fetch("/work?ms=0") for _ in range(30)]
        assert {reply.status for reply in replies} == {503}
        assert replies[0].json()["message"] == "Upgrading"
        assert server.fetch(STATS_PATH).status == 200, "the exempt path is served"

        tidegate_command("maintenance", "off", "--state", str(state))
        answers_by_worker(server, pids, 200)
        assert {server.fetch("/work?ms=0").status for _ in range(30)} == {200}
        assert set(server.worker_pids()) == pids, "no worker was replaced"
    assert_clean_log(server)


# -- websockets ---------------------------------------------------------------------------------


def echo(server: ServerProcess) -> str:
    from websockets.sync.client import connect

    with connect(f"ws://{server.host}:{server.port}/ws", open_timeout=5) as websocket:
        websocket.send("ping")
        answer = websocket.recv(timeout=5)
    assert isinstance(answer, str)
    return answer


@contextlib.contextmanager
def full(server: ServerProcess) -> Iterator[None]:
    """Every permit taken by streams held open (the next request is shed) until the end of
    the block."""
    held: list[Stream] = []
    try:
        held.extend(Stream(server) for _ in range(LIMIT))
        assert [stream.status for stream in held] == [200] * LIMIT
        assert server.fetch("/work?ms=0").status == 503
        yield
    finally:
        for stream in held:
            stream.hang_up(abort=False)


@pytest.mark.parametrize("app", WEBSOCKET_APPS)
@pytest.mark.parametrize("name", sorted(ASGI_SERVERS))
def test_websockets_pass_by_default_and_a_full_gate_refuses_them_when_gated(
    name: str, app: str
) -> None:
    from websockets.exceptions import InvalidStatus

    with asgi_server(name, app) as server:
        with full(server):
            assert echo(server) == "ping", "websockets are exempt by default"
        assert settled(server)["in_flight"] == 0
    assert_clean_log(server)

    with asgi_server(name, app, env={GATE_WEBSOCKETS_ENV: "1"}) as server:
        assert echo(server) == "ping", "an admitted websocket is served"
        assert settled(server)["admitted"] == 1, "the websocket took a permit"
        with full(server), pytest.raises(InvalidStatus) as refused:
            echo(server)
        # Each server offers the denial-response extension: the client reads the 503 itself.
        response = refused.value.response
        body = bytes(response.body or b"")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Type"] == "application/json"
        assert int(response.headers["Content-Length"]) == len(body)
        assert json.loads(body)["reason"] == "overload"
        after = settled(server)
        assert after["in_flight"] == 0
        assert after["rejected"] == 2, "the request and the websocket were refused"
        assert echo(server) == "ping", "the gate has room again"
    assert_clean_log(server)


@pytest.mark.parametrize("name", sorted(ASGI_SERVERS))
def test_every_server_stops_with_all_its_processes(name: str) -> None:
    with asgi_server(name, "bare") as server:
        group = server.pid
        assert server.fetch("/work?ms=0").status == 200
        os.killpg(group, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)


@pytest.mark.parametrize("name", sorted(ASGI_SERVERS))
def test_the_middleware_itself_is_served_as_an_asgi_3_app(name: str) -> None:
    require(missing(name))
    options: dict[str, Any] = {"env": {"TIDEGATE_TEST_LIMIT": "1"}}
    if name != "gunicorn-uvicorn":
        options["ready_path"] = STATS_PATH
    with ASGI_SERVERS[name]("asgi_apps:middleware_application", **options) as server:
        reply = server.fetch("/work?ms=0")
        assert (reply.status, reply.body) == (200, b"done")
        with contextlib.closing(Stream(server)) as held:
            assert held.status == 200
            assert_full_503(server.fetch("/work?ms=0"), pid=False)
    assert_clean_log(server)
