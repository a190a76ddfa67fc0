"""The limit sets itself: limit="auto", queue time behind nginx, and priorities, under overload.

Run from a release build (``pip install .``, not an editable debug build)::

    python benchmarks/adaptive.py            # full run, about five minutes
    python benchmarks/adaptive.py --quick    # a smoke run (one pool size, short runs)

1. **Auto limit.** The overload app of ``overload.py`` (a pool of N connections, each use
   holding one for 20 ms; one Gunicorn gthread worker with 64 threads; 64 clients that honour
   Retry-After) with ``TideGateMiddleware(app, limit="auto")`` and nothing else, for N = 4, 8
   and 32, against the same app ungated. The limit is read every 100 ms at an exempt path. Targets:
   within 10 s the limit settles within [0.75 N, 2 N]; success p90 <= 0.35 x ungated; successes
   >= 0.85 x ungated. Then the query time triples: within 10 s the limit has moved and the
   success p90 is at most 2 x the new service time (60 ms).
2. **Queue time.** A real nginx on a loopback port, with ``proxy_set_header X-Request-Start
   "t=${msec}";``, in front of Gunicorn sync workers (4 workers, 250 ms per request; 16 clients
   that honour Retry-After: 4 x what the workers can take at once), with and without
   ``max_queue_time=0.5``. Targets: success p90 under 0.5 s + the service time; no request that
   waited longer than 0.5 s (plus 50 ms of slack for the clocks) reached the app.
3. **Priority.** The overload app with N = 8 and ``limit=8``, 32 clients (4 x) that honour
   Retry-After; one connection in five sends critical requests, the others sheddable ones
   (``priority=`` looks at the client's port); the server counts the answers by priority.
   Target: critical success rate >= 99 %.

The exit status is 1 if any target is missed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, request
from harness import HOST, Load, closed_loop, fmt, gunicorn, ratio, serving, versions

from tidegate.wsgi import TideGateMiddleware

QUERY_SECONDS = 0.020
POOL = int(os.environ.get("ADAPTIVE_POOL", "8"))
LIMIT_PATH = "/tidegate/limit"
CONTROL_PATH = "/control/slower"
#: The app's query time, changed by ``CONTROL_PATH`` (one worker: one process).
_query = {"seconds": QUERY_SECONDS}


def make_app(pool_size: int) -> Flask:
    """``overload.py``'s app: ``/work`` needs one of ``pool_size`` connections."""
    app = Flask("adaptive")
    pool: queue.Queue[int] = queue.Queue()
    for number in range(pool_size):
        pool.put(number)

    @app.get("/work")
    def work() -> dict[str, int]:
        connection = pool.get()
        try:
            time.sleep(_query["seconds"])
        finally:
            pool.put(connection)
        return {"rows": 1}

    @app.get(CONTROL_PATH)
    def slower() -> str:
        _query["seconds"] = float(request.args.get("seconds", QUERY_SECONDS))
        return "ok"

    return app


def _with_limit_path(middleware: TideGateMiddleware) -> Any:
    """The middleware, plus an exempt path answering its gate's limit."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == LIMIT_PATH:
            gate = middleware.gate
            body = f"{gate.limit if gate is not None else 0}".encode()
            start_response(
                "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            )
            return [body]
        return middleware(environ, start_response)

    return app


def _priority(environ: dict[str, Any]) -> str:
    """One connection in five (by the client's port) sends critical requests."""
    port = environ.get("REMOTE_PORT")
    return "critical" if str(port).isdigit() and int(port) % 5 == 0 else "sheddable"


STATS_PATH = "/tidegate/stats"
_answers: dict[str, dict[str, int]] = {"critical": {}, "sheddable": {}}
_connections: dict[str, set[str]] = {"critical": set(), "sheddable": set()}


def _counted(app: Any) -> Any:
    """``app``, counting its answers by priority; ``STATS_PATH`` gives the counts."""

    def counted(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == STATS_PATH:
            body = json.dumps(
                {
                    "answers": _answers,
                    "connections": {level: len(ports) for level, ports in _connections.items()},
                }
            ).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        level = _priority(environ)
        _connections[level].add(str(environ.get("REMOTE_PORT")))

        def record(status: str, headers: Any, exc_info: Any = None) -> Any:
            counts = _answers[level]
            counts[status[:3]] = counts.get(status[:3], 0) + 1
            return start_response(status, headers, exc_info)

        return app(environ, record)

    return counted


# What Gunicorn serves (the pool size comes from ADAPTIVE_POOL).
ungated = make_app(POOL)
auto = _with_limit_path(
    TideGateMiddleware(make_app(POOL), limit="auto", exempt_paths=[CONTROL_PATH])
)
prioritised = _counted(TideGateMiddleware(make_app(POOL), limit=POOL, priority=_priority))

# -- queue time --------------------------------------------------------------------------------

SYNC_WORKERS = 4
SYNC_SERVICE = 0.250
MAX_QUEUE_TIME = 0.5
SLACK = 0.050


def sync_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Takes ``SYNC_SERVICE``; notes in ``ADAPTIVE_STALE`` every request that reached it after
    waiting longer than ``MAX_QUEUE_TIME`` (plus slack)."""
    start = environ.get("HTTP_X_REQUEST_START", "")
    try:
        waited = time.time() - float(start.removeprefix("t="))
    except ValueError:
        waited = 0.0
    if waited > MAX_QUEUE_TIME + SLACK:
        path = os.environ.get("ADAPTIVE_STALE")
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, b"x")
            os.close(fd)
    time.sleep(SYNC_SERVICE)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


queue_ungated = sync_app
queue_gated = TideGateMiddleware(sync_app, max_queue_time=MAX_QUEUE_TIME)


class Nginx:
    """nginx on a loopback port proxying to ``upstream_port``, setting ``X-Request-Start``."""

    def __init__(self, upstream_port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tidegate-nginx-"))
        os.chmod(self.dir, 0o755)
        with socket_port() as port:
            self.port = port
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = self.dir / "nginx.conf"
        conf.write_text(
            f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    upstream app {{ server {HOST}:{upstream_port}; }}
    server {{
        listen {HOST}:{self.port};
        location / {{
            proxy_pass http://app;
            proxy_set_header X-Request-Start "t=${{msec}}";
            proxy_read_timeout 120s;
        }}
    }}
}}
"""
        )
        self.process = subprocess.Popen(
            [binary, "-p", str(self.dir), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("nginx did not start")

    def worker_cpu(self) -> None:
        return None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]


# -- measuring ---------------------------------------------------------------------------------


class LimitWatcher:
    """Reads the limit every 100 ms while it runs: ``(seconds since start, limit)``. A process
    of its own: the load generator forks its clients, and a fork must not copy a thread."""

    def __init__(self, port: int) -> None:
        context = multiprocessing.get_context("fork")
        self._stop = context.Event()
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_watch, args=(f"http://{HOST}:{port}{LIMIT_PATH}", self._stop, sender)
        )
        self._process.start()
        sender.close()

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        samples: list[tuple[float, int]] = self._receiver.recv()
        self._process.join()
        return samples


def _watch(url: str, stop: Any, sender: Any) -> None:
    start = time.monotonic()
    samples = []
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                samples.append((time.monotonic() - start, int(answer.read())))
        except (OSError, ValueError):
            pass
        stop.wait(0.1)
    sender.send(samples)


def settled_at(samples: list[tuple[float, int]], low: float, high: float) -> float | None:
    """The first time from which the limit stays within [low, high], probes (the limit held
    at 2 for a moment to measure the baseline) aside."""
    outside = [t for t, limit in samples if not low <= limit <= high and limit != 2]
    inside = [t for t, limit in samples if low <= limit <= high]
    if not inside:
        return None
    last_out = max(outside, default=-1.0)
    after = [t for t in inside if t > last_out]
    return min(after) if after else None


def control(port: int, seconds: float) -> None:
    url = f"http://{HOST}:{port}{CONTROL_PATH}?seconds={seconds}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        answer.read()


def run_load(server: Any, path: str, clients: int, warmup: float, duration: float) -> Load:
    return closed_loop(
        server,
        path,
        connections=clients,
        processes=2,
        warmup=warmup,
        duration=duration,
        honour_retry_after=True,
    )


def check(label: str, value: float | None, bound: float, at_most: bool) -> bool:
    ok = value is not None and (value <= bound if at_most else value >= bound)
    sign = "<=" if at_most else ">="
    print(
        f"  {label:44}{fmt(value, 3):>9}   target {sign} {bound:g}   " + ("met" if ok else "MISSED")
    )
    return ok


def auto_limit(pools: list[int], quick: bool) -> bool:
    settle_window = 4.0 if quick else 10.0
    measure = 2.0 if quick else 6.0
    ok = True
    for pool in pools:
        env = {"ADAPTIVE_POOL": str(pool)}
        servers = {
            name: gunicorn(f"adaptive:{name}", threads=64, env=env) for name in ("ungated", "auto")
        }
        with serving(list(servers.values())):
            base = run_load(servers["ungated"], "/work", 64, 1.0, measure)
            time.sleep(0.3)
            watcher = LimitWatcher(servers["auto"].port)
            gated = run_load(servers["auto"], "/work", 64, settle_window, measure)
            samples = watcher.stop()
            time.sleep(0.3)
            # The query time triples; the clients go on.
            before = statistics.median(limit for t, limit in samples if t > settle_window)
            control(servers["auto"].port, 3 * QUERY_SECONDS)
            watcher = LimitWatcher(servers["auto"].port)
            slower = run_load(servers["auto"], "/work", 64, settle_window, measure)
            after_samples = watcher.stop()
            control(servers["auto"].port, QUERY_SECONDS)
        settle = settled_at(samples, 0.75 * pool, 2 * pool)
        after = [limit for t, limit in after_samples if t > settle_window]
        moved = statistics.median(after) if after else None
        p90 = gated.percentile_ms(200, 90)
        base_p90 = base.percentile_ms(200, 90)
        limits = [limit for t, limit in samples if t > settle_window]
        print(
            f"N = {pool}: ungated {fmt(base.rate(200), 0)} successes/s, p90 "
            f"{fmt(base_p90)} ms; auto {fmt(gated.rate(200), 0)} successes/s, p90 {fmt(p90)} ms, "
            f"limit after {settle_window:g} s: median {fmt(before, 0)}, range "
            f"{min(limits, default=0)}-{max(limits, default=0)}"
        )
        print(
            f"  query time x3: limit median {fmt(moved, 0)} (was {fmt(before, 0)}), success p90 "
            f"{fmt(slower.percentile_ms(200, 90))} ms, {fmt(slower.rate(200), 0)} successes/s"
        )
        ok &= check(f"N={pool} limit settled within [0.75N, 2N] at (s)", settle, 10.0, True)
        ok &= check(
            f"N={pool} success p90 / ungated",
            ratio(p90, base_p90),
            0.35,
            True,
        )
        ok &= check(
            f"N={pool} successes / ungated",
            ratio(gated.rate(200), base.rate(200)),
            0.85,
            False,
        )
        slow_p90 = slower.percentile_ms(200, 90)
        ok &= check(
            f"N={pool} x3: success p90 / new service time",
            None if slow_p90 is None else slow_p90 / (3 * QUERY_SECONDS * 1000),
            2.0,
            True,
        )
    return ok


def queue_time(quick: bool) -> bool:
    duration = 3.0 if quick else 10.0
    stale = Path(tempfile.mkdtemp(prefix="tidegate-stale-"))
    results = {}
    for name in ("queue_ungated", "queue_gated"):
        marks = stale / name
        server = gunicorn(
            f"adaptive:{name}",
            worker_class="sync",
            workers=SYNC_WORKERS,
            threads=1,
            env={"ADAPTIVE_STALE": str(marks)},
        )
        with serving([server]):
            nginx = Nginx(server.port)
            try:
                load = run_load(nginx, "/", 4 * SYNC_WORKERS, 1.0, duration)
            finally:
                nginx.stop()
        reached = marks.stat().st_size if marks.exists() else 0
        results[name] = (load, reached)
    shutil.rmtree(stale, ignore_errors=True)
    ok = True
    for name, (load, reached) in results.items():
        print(
            f"{name}: {fmt(load.rate(200), 1)} successes/s, success p90 "
            f"{fmt(load.percentile_ms(200, 90))} ms, {load.count(503)} 503s, "
            f"{reached} requests reached the app after waiting > {MAX_QUEUE_TIME + SLACK:g} s"
        )
    load, reached = results["queue_gated"]
    ok &= check(
        "gated success p90 (ms)",
        load.percentile_ms(200, 90),
        (MAX_QUEUE_TIME + SYNC_SERVICE) * 1000,
        True,
    )
    ok &= check("gated: stale requests that reached the app", float(reached), 0, True)
    return ok


def priority(quick: bool) -> bool:
    duration = 3.0 if quick else 10.0
    server = gunicorn("adaptive:prioritised", threads=64, env={"ADAPTIVE_POOL": "8"})
    with serving([server]):
        run_load(server, "/work", 32, 1.0, duration)
        with urllib.request.urlopen(f"http://{HOST}:{server.port}{STATS_PATH}") as answer:
            stats = json.load(answer)
    for level in ("critical", "sheddable"):
        answers = stats["answers"][level]
        total = sum(answers.values())
        print(
            f"{level}: {stats['connections'][level]} connections, {answers.get('200', 0)} of "
            f"{total} requests succeeded "
            f"({fmt(100 * answers.get('200', 0) / total if total else None)} %)"
        )
    critical = stats["answers"]["critical"]
    total = sum(critical.values())
    rate = critical.get("200", 0) / total if total else None
    return check("critical success rate", rate, 0.99, False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--only", choices=("auto", "queue", "priority"), help="one part of the benchmark"
    )
    args = parser.parse_args(argv)
    print(__doc__.splitlines()[0])
    print(versions())
    ok = True
    if args.only in (None, "auto"):
        print("\n1. limit='auto'")
        ok &= auto_limit([8] if args.quick else [4, 8, 32], args.quick)
    if args.only in (None, "queue"):
        print("\n2. max_queue_time behind nginx")
        ok &= queue_time(args.quick)
    if args.only in (None, "priority"):
        print("\n3. priorities")
        ok &= priority(args.quick)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
