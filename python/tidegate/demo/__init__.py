"""``tidegate demo``: every kind of 503, seen by real HTTP clients, in a few seconds.

A small WSGI app wrapped in :class:`~tidegate.wsgi.TideGateMiddleware` (a concurrency limit,
a :class:`~tidegate.MaintenanceSwitch` on a temporary state file, :class:`~tidegate.HealthChecks`
reporting a :class:`~tidegate.CircuitBreaker` around a fake dependency) is served by the
standard library's WSGI server on 127.0.0.1. Each scene sends a burst of client threads
(``http.client``, one connection per request) and records what they saw. Nothing but tidegate
and the standard library is needed; everything started is stopped and joined at the end, and
the state file is removed.

The parts: ``app`` (the shop, its server and the stage the scenes turn), ``clients`` (the
client threads), ``scenes`` (what each scene does and says), ``report`` (the summary and the
table); this module plays them in order and prints the result.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tidegate.demo.app import LIMIT, METRICS_PATH, start, stop
from tidegate.demo.report import Scene, percentile, table
from tidegate.demo.scenes import SCENES
from tidegate.demo.servers import ASGI_SERVERS, HOST, asgi_server

__all__ = ["ASGI_SERVERS", "LIMIT", "asgi_server", "percentile", "play", "run", "table"]


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


def _scrape(port: int) -> list[str]:
    """The shop's own metrics, as a scraper reads them: the request counters that moved,
    the number of timed requests and the breaker's calls."""
    url = f"http://{HOST}:{port}{METRICS_PATH}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode("utf-8")
    wanted = (
        "tidegate_requests_total{",
        "tidegate_request_duration_seconds_count",
        "tidegate_breaker_calls_total{",
    )
    lines = []
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if line.startswith(wanted) and value not in ("0", "0.0"):
            lines.append(f"{name} {value}")
    return lines


def play(*, asgi: str | None = None) -> dict[str, Any]:
    """Run every scene against a fresh server; what clients saw, as a JSON-ready dict. With
    ``asgi`` (``"uvicorn"`` or ``"asyncio"``) the ASGI shop is served by that server."""
    started = time.perf_counter()
    threads_before = threading.active_count()
    folder = Path(tempfile.mkdtemp(prefix="tidegate-demo-"))
    scenes: list[Scene] = []
    try:
        with _logged() as log:
            stage, running = start(folder, asgi=asgi)
            try:
                scenes = [scene(stage) for scene in SCENES]
                metrics = _scrape(stage.port)
            finally:
                stop(running)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "server": running.name,
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
        "metrics": metrics,
        "state_file": str(folder / "maintenance.json"),
        "state_file_removed": not folder.exists(),
        "threads_left": threading.active_count() - threads_before,
        "seconds": round(time.perf_counter() - started, 2),
    }


def run(*, json_output: bool = False, asgi: bool = False) -> int:
    """``tidegate demo``: play the scenes and print what clients saw. Returns the exit code.
    With ``asgi`` the shop is an ASGI app, served by Uvicorn where it is installed and by a
    minimal asyncio server otherwise."""
    server = asgi_server() if asgi else None
    if not json_output:
        if server is None:
            kind, served = "a WSGI app", "the standard library's WSGI server"
        elif server == "uvicorn":
            kind, served = "an ASGI app", "Uvicorn"
        else:
            kind, served = "an ASGI app", "a minimal asyncio server (Uvicorn is not installed)"
        middleware = "tidegate.asgi.TideGateMiddleware" if asgi else "TideGateMiddleware"
        print(
            f"tidegate demo: {kind} on {HOST}, served by {served}, behind\n"
            f"{middleware}(limit={LIMIT}) with a maintenance state file and a circuit\n"
            "breaker; real clients, real sockets.\n",
            flush=True,
        )
    try:
        report = play(asgi=server)
    except (OSError, RuntimeError) as exc:
        print(f"tidegate demo: error: {exc}", file=sys.stderr)
        return 1
    if json_output:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
        if report["metrics"]:
            print(f"\n{METRICS_PATH} said (counters that moved):")
            print("\n".join(f"  {line}" for line in report["metrics"]))
        if report["log"]:
            print("\nthe tidegate logger said:")
            print("\n".join(f"  {line}" for line in report["log"]))
        print(
            f"\nlatency: p50/p99 of what clients waited. Done in {report['seconds']} s; "
            "server stopped, state file removed."
        )
    return 0
