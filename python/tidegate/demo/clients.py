"""The demo's clients: ``http.client`` threads, one connection per request, and what each saw."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tidegate.demo.servers import HOST


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
