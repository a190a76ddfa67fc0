"""What the Gunicorn benchmarks share: Gunicorn on a loopback port (started by the tests'
launcher, ``tests/servers.py``), and a closed-loop load generator that can prove it is not the
bottleneck.

The load generator runs in its own processes (``processes``), each driving its share of the
keep-alive connections from one ``selectors`` loop over raw sockets. Closed loop: every
connection has one request outstanding and sends the next as soon as the answer is in (or,
with ``honour_retry_after``, once a 503's ``Retry-After`` has passed). Only answers completed
inside the measured window count; latency runs from the request's first byte sent to its last
byte received. Each client process reports the CPU time it used in the window, and the server
worker's CPU time is read from ``/proc``, so every run can say which side was saturated.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# One launcher for real servers, shared with the tests.
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from servers import HOST, GunicornServer, ServerProcess, UvicornServer, serving  # noqa: E402

__all__ = [
    "HOST",
    "Load",
    "closed_loop",
    "fmt",
    "gunicorn",
    "medians",
    "percent",
    "serving",
    "uvicorn",
    "versions",
]

# -- Gunicorn on a loopback port -------------------------------------------------------------


def gunicorn(
    app: str,
    *,
    threads: int = 64,
    worker_class: str = "gthread",
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> GunicornServer:
    """Gunicorn serving ``app`` (``module:callable`` from this directory), launched by the
    tests' launcher: a loopback socket chosen and bound before it starts, ready once every
    worker has loaded the app, stopped with its whole process group. Start several with
    :func:`serving`; :meth:`~servers.ServerProcess.worker_cpu` gives the workers' CPU time."""
    return GunicornServer(
        app,
        worker_class=worker_class,
        workers=workers,
        threads=threads,
        env=env,
        chdir=BENCH_DIR,
        # A closed-loop run opens all its connections at once.
        backlog=1024,
        # Several servers boot side by side on a machine the load generator shares.
        startup_timeout=60.0,
        args=["--log-level=warning"],
    )


def uvicorn(app: str, *, args: list[str] | None = None) -> UvicornServer:
    """Uvicorn (one process, its default HTTP implementation) serving ``app`` from this
    directory, launched like :func:`gunicorn`; ``args`` are Uvicorn's options.
    :meth:`~servers.ServerProcess.worker_cpu` gives the server process's CPU time."""
    return UvicornServer(
        app,
        chdir=BENCH_DIR,
        backlog=1024,
        startup_timeout=60.0,
        ready_path="/ping",
        # Errors only: Uvicorn logs every refusal of --limit-concurrency as a warning.
        args=["--log-level=error", *(args or [])],
    )


# -- closed-loop load --------------------------------------------------------------------------


@dataclass
class Load:
    """What a closed-loop run saw inside its measured window."""

    window: float
    connections: int
    processes: int
    latencies: dict[int, list[float]] = field(default_factory=dict)
    client_cpu: float = 0.0
    server_cpu: float | None = None
    reconnects: int = 0
    errors: int = 0
    #: 503s that came without a usable ``Retry-After`` (a number of seconds).
    unhinted: int = 0

    def count(self, status: int | None = None) -> int:
        if status is None:
            return sum(len(values) for values in self.latencies.values())
        return len(self.latencies.get(status, ()))

    def rate(self, status: int | None = None) -> float:
        """Answers per second (with that status, or all)."""
        return self.count(status) / self.window

    def percentile_ms(self, status: int, q: float) -> float | None:
        """Nearest-rank percentile of the latencies of answers with ``status``, in ms."""
        values = sorted(self.latencies.get(status, ()))
        if not values:
            return None
        return values[max(0, math.ceil(q / 100 * len(values)) - 1)] * 1000

    def client_cpu_share(self) -> float:
        """Fraction of one core each client process used, on average."""
        return self.client_cpu / self.window / self.processes

    def client_us_per_answer(self) -> float:
        total = self.count()
        return self.client_cpu / total * 1e6 if total else math.inf

    def server_cpu_share(self) -> float | None:
        """Cores the server's worker used (1.0 is one core busy all the window)."""
        return None if self.server_cpu is None else self.server_cpu / self.window

    def server_us_per_answer(self) -> float | None:
        total = self.count()
        return None if self.server_cpu is None or not total else self.server_cpu / total * 1e6


def closed_loop(
    server: ServerProcess,
    path: str,
    *,
    connections: int,
    processes: int,
    warmup: float,
    duration: float,
    honour_retry_after: bool = False,
) -> Load:
    """Drives ``GET path`` on ``connections`` keep-alive connections for ``warmup`` seconds,
    then measures for ``duration`` seconds."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n\r\n".encode()
    context = (
        multiprocessing.get_context("fork")
        if "fork" in multiprocessing.get_all_start_methods()
        else multiprocessing.get_context("spawn")
    )
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    # Every client process connects first; all start together once the last is connected.
    barrier = context.Barrier(processes + 1)
    pipes = []
    children = []
    for share in shares:
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=_client,
            args=(
                server.port,
                request,
                share,
                barrier,
                warmup,
                duration,
                honour_retry_after,
                sender,
            ),
            daemon=True,
        )
        child.start()
        sender.close()
        pipes.append(receiver)
        children.append(child)
    barrier.wait(timeout=60.0)
    start = time.monotonic()
    _sleep_until(start + warmup)
    server_before = server.worker_cpu()
    _sleep_until(start + warmup + duration)
    server_after = server.worker_cpu()
    load = Load(window=duration, connections=connections, processes=processes)
    if server_before is not None and server_after is not None:
        load.server_cpu = server_after - server_before
    for receiver, child in zip(pipes, children, strict=True):
        try:
            report = receiver.recv()
        except EOFError:
            raise RuntimeError("a load-generator process failed (its traceback is above)") from None
        child.join()
        for status, raw in report["latencies"].items():
            values = array("d")
            values.frombytes(raw)
            load.latencies.setdefault(status, []).extend(values)
        load.client_cpu += report["cpu"]
        load.reconnects += report["reconnects"]
        load.errors += report["errors"]
        load.unhinted += report["unhinted"]
    return load


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class _Client:
    __slots__ = ("buffer", "due", "sent_at", "sock")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.due = 0.0


def _client(
    port: int,
    request: bytes,
    connections: int,
    barrier: Barrier,
    warmup: float,
    duration: float,
    honour_retry_after: bool,
    out: Connection,
) -> None:
    """One load-generator process: ``connections`` closed-loop clients on one selector."""
    selector = selectors.DefaultSelector()
    latencies: dict[int, array[float]] = {}
    reconnects = errors = unhinted = 0
    cpu_begin: float | None = None
    sleeping: list[_Client] = []

    def connect(client: _Client) -> None:
        if client.sock is not None:
            selector.unregister(client.sock)
            client.sock.close()
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.sock = sock
        client.buffer.clear()
        selector.register(sock, selectors.EVENT_READ, client)

    def send(client: _Client, now: float) -> None:
        nonlocal errors, reconnects
        client.sent_at = now
        for _attempt in range(3):
            try:
                assert client.sock is not None
                client.sock.sendall(request)
                return
            except OSError:
                reconnects += 1
                try:
                    connect(client)
                except OSError:
                    errors += 1
                    time.sleep(0.01)
        raise RuntimeError("the server does not accept connections")

    clients = [_Client() for _ in range(connections)]
    for client in clients:
        connect(client)
    barrier.wait(timeout=60.0)
    now = time.monotonic()
    begin, end = now + warmup, now + warmup + duration
    for client in clients:
        send(client, now)

    while now < end:
        if cpu_begin is None and now >= begin:
            cpu_begin = time.process_time()
        timeout = (end if cpu_begin is not None else begin) - now
        if sleeping:
            timeout = min(timeout, min(client.due for client in sleeping) - now)
        for key, _events in selector.select(max(0.0, timeout)):
            client = key.data
            assert client.sock is not None
            try:
                data = client.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                # The server closed the connection: send the request again on a new one,
                # timed from its first attempt.
                reconnects += 1
                connect(client)
                if client not in sleeping:
                    send(client, client.sent_at)
                continue
            buffer = client.buffer
            buffer += data
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = bytes(buffer[:head_end]).lower()
            length = _header(head, b"content-length")
            if length is None:
                raise RuntimeError(f"an answer without Content-Length: {head!r}")
            if len(buffer) < head_end + 4 + int(length):
                continue
            done = time.monotonic()
            status = int(head[9:12])
            if done >= begin:
                latencies.setdefault(status, array("d")).append(done - client.sent_at)
            del buffer[: head_end + 4 + int(length)]
            if _header(head, b"connection") == b"close":
                reconnects += 1
                connect(client)
            retry_after = _header(head, b"retry-after")
            hinted = retry_after is not None and retry_after.isdigit()
            if status == 503 and not hinted and done >= begin:
                unhinted += 1
            if status == 503 and honour_retry_after and hinted:
                assert retry_after is not None
                client.due = done + int(retry_after)
                sleeping.append(client)
            else:
                send(client, done)
        now = time.monotonic()
        if sleeping:
            awake = [client for client in sleeping if client.due <= now]
            if awake:
                sleeping = [client for client in sleeping if client.due > now]
                for client in awake:
                    send(client, now)

    cpu = time.process_time() - cpu_begin if cpu_begin is not None else 0.0
    for client in clients:
        if client.sock is not None:
            client.sock.close()
    out.send(
        {
            "latencies": {status: values.tobytes() for status, values in latencies.items()},
            "cpu": cpu,
            "reconnects": reconnects,
            "errors": errors,
            "unhinted": unhinted,
        }
    )
    out.close()


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` in a lower-cased response head, or None."""
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    value_start = at + len(name) + 3
    value_end = head.find(b"\r\n", value_start)
    return head[value_start : value_end if value_end >= 0 else len(head)].strip()


# -- reporting ---------------------------------------------------------------------------------


def versions() -> str:
    return (
        f"Python {platform.python_version()}, Gunicorn {version('gunicorn')}, "
        f"tidegate {version('tidegate')}, {os.cpu_count()} CPUs, {platform.system()}"
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``; ``None`` when either is missing or ``base`` is 0."""
    return None if value is None or not base else value / base


def percent(share: float | None) -> float | None:
    """A share (1.0 is all) as a percentage."""
    return None if share is None else 100 * share


def medians(
    loads: list[Load], figures: dict[str, Callable[[Load], float | None]]
) -> dict[str, float | None]:
    """Each figure's median over the runs in ``loads`` (runs where it is undefined left out;
    ``None`` when it is undefined in all)."""
    summary: dict[str, float | None] = {}
    for name, figure in figures.items():
        values = [value for value in map(figure, loads) if value is not None]
        summary[name] = statistics.median(values) if values else None
    return summary


def instruction_options(parser: argparse.ArgumentParser) -> None:
    """Adds ``--instructions`` (count with callgrind too) and the hidden ``--run-one NAME N``
    that the counting runs the script with."""
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per request with callgrind (needs valgrind)",
    )
    parser.add_argument("--run-one", nargs=2, metavar=("NAME", "N"), help=argparse.SUPPRESS)


def instructions_per_request(script: str, names: Iterable[str]) -> dict[str, float] | None:
    """Instructions one request through each candidate of ``script`` costs, counted by
    callgrind: ``script --run-one NAME N`` serves N requests through it, and the difference
    between a long and a short run cancels start-up out. The same binary and inputs give the
    same count whatever else the machine is doing. ``None`` (and why, printed) when valgrind
    is missing or a count failed."""
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: no instruction counts")
        return None
    counted = {}
    for name in names:
        runs = []
        for n in (1_000, 6_000):
            done = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--callgrind-out-file=/dev/null",
                    sys.executable,
                    script,
                    "--run-one",
                    name,
                    str(n),
                ],
                capture_output=True,
                text=True,
                check=False,
                # A fixed hash seed: dict layouts, and so the counts, are the same every run.
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
            found = re.search(r"Collected : (\d+)", done.stderr)
            if done.returncode != 0 or found is None:
                print("callgrind failed: no instruction counts")
                return None
            runs.append(int(found.group(1)))
        counted[name] = (runs[1] - runs[0]) / 5_000
    return counted
