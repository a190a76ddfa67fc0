"""TideGateMiddleware under a real Gunicorn (gthread, more threads than the limit) on a loopback
port, with concurrent clients: the app never sees more than the limit, the excess gets the full
503, and every permit comes back, also when clients hang up in the middle of a streamed body.

The app (``gunicorn_apps.py``) measures its own concurrency and reports it, with the gate's
counters, at the exempt path ``/_stats``.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from gunicorn_apps import CHUNK
from servers import (
    GunicornServer,
    Response,
    ServerError,
    settled,
    stats,
    until_served,
)

pytestmark = pytest.mark.server

APP = "gunicorn_apps:application"
LIMIT = 4
CLIENTS = 32
#: Long enough that no stream can end before the server notices its client is gone.
ABANDONED_STREAM = "/stream?chunks=400&ms=10"

Start = Callable[..., GunicornServer]


def serve(start_gunicorn: Start) -> GunicornServer:
    return start_gunicorn(
        APP, worker_class="gthread", threads=4 * LIMIT, env={"TIDEGATE_TEST_LIMIT": str(LIMIT)}
    )


def assert_full_503(status: int, reason: str, headers: Any, body: bytes) -> None:
    assert (status, reason) == (503, "Service Unavailable")
    assert headers["Retry-After"] == "1"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    document = Response(status, reason, headers, body).json()
    assert document["error"] == "Service Unavailable"
    assert document["reason"] == "overload"
    assert document["retry_after"] == 1
    assert isinstance(document["message"], str) and document["message"]


def assert_clean_log(server: GunicornServer) -> None:
    output = server.output()
    assert "Traceback" not in output, output
    assert "[ERROR]" not in output, output


def test_the_app_never_sees_more_than_the_limit(start_gunicorn: Start) -> None:
    server = serve(start_gunicorn)
    served_per_client = 2
    replies = until_served(
        server, "/work?ms=30", clients=CLIENTS, times=served_per_client, seconds=10
    )

    codes = Counter(reply.status for reply in replies)
    for reply in replies:
        if reply.status == 200:
            assert reply.body == b"done"
        else:
            assert_full_503(reply.status, reply.reason, reply.headers, reply.body)
    assert codes[200] == CLIENTS * served_per_client
    assert codes[503] > 0, codes

    final = settled(server)
    assert final["admitted"] == codes[200]
    assert final["rejected"] == codes[503]
    assert final["admitted"] + final["rejected"] == len(replies)
    assert final["entered"] == codes[200], "a shed request reached the app"
    assert 2 <= final["worst"] <= LIMIT, final
    assert final["peak"] == LIMIT, "a 503 was sent, so the gate was full"
    assert_clean_log(server)


class Stream:
    """A streamed response read up to its first chunk, then abandoned by the client."""

    def __init__(self, server: GunicornServer, path: str = ABANDONED_STREAM) -> None:
        self.conn = server.connection()
        self.conn.request("GET", path)
        self.reply = self.conn.getresponse()
        self.status = self.reply.status
        if self.status == 200:
            assert self.reply.read(len(CHUNK)) == CHUNK
        else:
            body = self.reply.read()
            self.conn.close()
            assert_full_503(self.status, self.reply.reason, self.reply.headers, body)

    def hang_up(self, *, abort: bool) -> None:
        """Closes the connection mid-body: a FIN, or with ``abort`` a RST."""
        sock = self.conn.sock
        if abort and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()


def test_clients_hanging_up_mid_stream_give_every_permit_back(start_gunicorn: Start) -> None:
    server = serve(start_gunicorn)
    per_client = 3
    barrier = threading.Barrier(CLIENTS)
    deadline = time.monotonic() + 10

    def client(index: int) -> Counter[int]:
        seen: Counter[int] = Counter()
        barrier.wait(timeout=10)
        while seen[200] < per_client:
            assert time.monotonic() < deadline, f"client {index} was never admitted: {seen}"
            stream = Stream(server)
            seen[stream.status] += 1
            if stream.status == 200:
                stream.hang_up(abort=index % 2 == 1)
            else:
                time.sleep(random.uniform(0.005, 0.02))
        return seen

    with ThreadPoolExecutor(CLIENTS) as pool:
        seen = sum(pool.map(client, range(CLIENTS)), Counter[int]())
    abandoned = CLIENTS * per_client
    assert seen[200] == abandoned

    after = settled(server)
    assert after["admitted"] == abandoned
    assert after["rejected"] == seen[503]
    assert after["streams_started"] == abandoned
    assert after["streams_closed"] == abandoned
    assert after["streams_closed_early"] == abandoned, "every hang-up was noticed mid-stream"
    assert after["worst"] <= LIMIT

    # Every slot is free again: LIMIT streams are admitted at once, and the next is shed.
    held = [Stream(server) for _ in range(LIMIT)]
    assert [stream.status for stream in held] == [200] * LIMIT
    assert Stream(server).status == 503
    for stream in held:
        stream.hang_up(abort=False)
    final = settled(server)
    assert final["admitted"] == abandoned + LIMIT
    assert final["streams_closed_early"] == abandoned + LIMIT
    assert final["worst"] <= LIMIT
    assert_clean_log(server)


def test_a_server_that_cannot_start_fails_with_its_output() -> None:
    server = GunicornServer("no_such_module:application")
    with pytest.raises(ServerError, match="no_such_module"):
        server.start()
    assert server.returncode not in (None, 0)
    assert server.worker_pids() == []


def test_stopping_leaves_no_process_behind() -> None:
    with GunicornServer(APP, worker_class="sync", workers=2) as server:
        processes = [server.pid, *server.worker_pids()]
        assert len(processes) == 3
        assert server.fetch("/no-such-route").status == 404
    for pid in processes:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert server.returncode == 0


def test_an_auto_limit_finds_what_the_app_can_take(start_gunicorn: Start) -> None:
    """``limit="auto"`` under Gunicorn: the app (one worker, 32 threads, 20 ms a request,
    but only 4 at once without queueing: a pool the middleware cannot see) is driven by 32
    clients; the limit leaves its starting probe, comes down from the initial 20 towards
    what the app takes, and every permit comes back."""
    server = start_gunicorn(
        APP, worker_class="gthread", threads=32, env={"TIDEGATE_TEST_LIMIT": "auto"}
    )
    first = stats(server)
    assert first["probing"] is True and first["limit"] == 2, first
    replies = until_served(server, "/work?ms=20&pool=1", clients=CLIENTS, times=15, seconds=60)
    codes = Counter(reply.status for reply in replies)
    assert codes[200] == CLIENTS * 15
    for reply in replies:
        if reply.status == 503:
            assert_full_503(reply.status, reply.reason, reply.headers, reply.body)
    final = settled(server)
    assert final["probing"] is False, final
    assert 0.015 <= final["baseline"] <= 0.1, final
    # Admitted requests are the samples; the 503s and the stats requests are not.
    assert final["admitted"] == codes[200]
    assert final["rejected"] == codes[503]
    assert final["entered"] == codes[200], "a shed request reached the app"
    assert 2 <= final["limit"] <= 12, final
    assert_clean_log(server)
