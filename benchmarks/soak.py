"""Soak: a million in-process requests through ``TideGateMiddleware`` with random faults.

    python benchmarks/soak.py                       # 1,000,000 requests over 8 threads
    python benchmarks/soak.py --requests 50000      # the length CI runs (tests/test_soak.py)

Every request picks what the app does (answer, stream, raise before returning, raise after
``start_response``, raise midway through the body, raise ``CircuitOpenError``, fail in its own
``close()``) and what the "server" does with the body (read it all and close it, close it
after one chunk, close it without iterating, drop it without closing, or park it so that a
later request on any thread closes it). Parked bodies keep permits out, so the gate is full
much of the time and sheds for real. A few requests go to an exempt health path.

At the end it checks the invariants and prints them with the throughput:

- ``in_flight`` is 0: no permit leaked, whatever the fault;
- ``peak`` never passed the limit, and neither did the app's own count of requests inside it
  (a body counts as inside until it is closed, exhausted or dropped);
- ``admitted + rejected`` equals the gated requests (all but the exempt ones), ``admitted``
  equals the calls that reached the app, and ``rejected`` the overload 503s clients saw.

Exit status 0 when every invariant holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tidegate import CapacityGate, CircuitOpenError
from tidegate._tidegate import ClosingBody
from tidegate.responses import STATUS
from tidegate.wsgi import TideGateMiddleware

#: What the app does, with weights.
APP_FAULTS = {
    "answer": 40,
    "stream": 25,
    "raise_before_return": 8,
    "raise_after_start_response": 5,
    "raise_midway": 8,
    "circuit_open": 4,
    "close_raises": 5,
}

#: What the server does with the body, with weights.
CLIENT_ENDINGS = {
    "read_and_close": 45,
    "close_after_one_chunk": 12,
    "close_never_iterated": 10,
    "drop_unclosed": 10,
    "park": 23,
}

EXEMPT_SHARE = 0.02
UNPARK_SHARE = 0.05


class Boom(Exception):
    """The app's own failure, raised on purpose."""


@dataclass
class SoakResult:
    requests: int
    threads: int
    limit: int
    seconds: float
    in_flight: int
    peak: int
    admitted: int
    rejected: int
    exempt: int
    app_calls: int
    app_peak: int
    app_inside_at_end: int
    shed_seen: int
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    endings: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)

    @property
    def gated(self) -> int:
        return self.requests - self.exempt

    def violations(self) -> list[str]:
        """Every invariant that does not hold, as a sentence; empty when all hold."""
        broken = list(self.unexpected)
        if self.in_flight != 0:
            broken.append(f"in_flight is {self.in_flight} at the end, not 0")
        if self.peak > self.limit:
            broken.append(f"gate peak {self.peak} passed the limit {self.limit}")
        if self.app_peak > self.limit:
            broken.append(f"the app saw {self.app_peak} requests inside, limit {self.limit}")
        if self.app_inside_at_end != 0:
            broken.append(f"the app still has {self.app_inside_at_end} requests inside")
        if self.admitted + self.rejected != self.gated:
            broken.append(
                f"admitted {self.admitted} + rejected {self.rejected} != gated {self.gated}"
            )
        if self.admitted != self.app_calls:
            broken.append(f"admitted {self.admitted} != calls into the app {self.app_calls}")
        if self.rejected != self.shed_seen:
            broken.append(f"rejected {self.rejected} != overload 503s seen {self.shed_seen}")
        return broken

    def report(self) -> str:
        rate = self.requests / self.seconds if self.seconds else float("inf")
        lines = [
            f"soak: {self.requests} requests over {self.threads} threads, limit {self.limit}: "
            f"{self.seconds:.1f} s, {rate:,.0f} requests/s",
            f"  admitted {self.admitted} + rejected {self.rejected}"
            f" = {self.admitted + self.rejected}"
            f" (gated {self.gated}; exempt {self.exempt})",
            f"  peak {self.peak} (app's own count: {self.app_peak}), limit {self.limit};"
            f" in_flight at the end {self.in_flight}",
            "  app faults: " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            "  endings: " + ", ".join(f"{k} {v}" for k, v in sorted(self.endings.items())),
        ]
        broken = self.violations()
        lines.append("  invariants: all hold" if not broken else "  BROKEN: " + "; ".join(broken))
        return "\n".join(lines)


class FaultyApp:
    """A WSGI app that does what ``environ["soak.fault"]`` says, and counts how many requests
    are inside it (a returned body is inside until it is closed, exhausted or dropped)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.peak = 0
        self.calls = 0

    def enter(self) -> None:
        with self.lock:
            self.calls += 1
            self.inside += 1
            if self.inside > self.peak:
                self.peak = self.inside

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/health/live":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"alive"]
        fault = environ["soak.fault"]
        self.enter()
        if fault == "raise_before_return":
            self.leave()
            raise Boom(fault)
        if fault == "circuit_open":
            self.leave()
            raise CircuitOpenError("the database is down")
        start_response("200 OK", [("Content-Type", "text/plain")])
        if fault == "raise_after_start_response":
            self.leave()
            raise Boom(fault)
        if fault == "answer":
            self.leave()
            return [b"ok"]
        return Body(
            self, raise_midway=fault == "raise_midway", close_raises=fault == "close_raises"
        )


class Body:
    """A streamed body that leaves the app once: when closed, exhausted, or collected."""

    __slots__ = ("app", "close_raises", "left", "raise_midway")

    def __init__(self, app: FaultyApp, *, raise_midway: bool, close_raises: bool) -> None:
        self.app = app
        self.raise_midway = raise_midway
        self.close_raises = close_raises
        self.left = False

    def _leave(self) -> None:
        if not self.left:
            self.left = True
            self.app.leave()

    def __iter__(self) -> Iterator[bytes]:
        yield b"one "
        if self.raise_midway:
            raise Boom("raise_midway")
        yield b"two"

    def close(self) -> None:
        self._leave()
        if self.close_raises:
            raise Boom("close_raises")

    def __del__(self) -> None:
        self._leave()


def _record_status(seen: list[str], status: str, headers: Any, exc_info: Any = None) -> None:
    seen.append(status)


def soak(requests: int, *, threads: int = 8, limit: int = 4, seed: int = 1) -> SoakResult:
    """Runs ``requests`` requests split over ``threads`` threads and returns what it saw."""
    app = FaultyApp()
    gate = CapacityGate(limit)
    middleware = TideGateMiddleware(app, gate=gate)
    parked: collections.deque[Any] = collections.deque()
    lock = threading.Lock()
    totals = {"exempt": 0, "shed": 0}
    faults: collections.Counter[str] = collections.Counter()
    endings: collections.Counter[str] = collections.Counter()
    unexpected: list[str] = []
    fault_names, fault_weights = list(APP_FAULTS), list(APP_FAULTS.values())
    ending_names, ending_weights = list(CLIENT_ENDINGS), list(CLIENT_ENDINGS.values())
    start_barrier = threading.Barrier(threads + 1)

    def close(body: Any) -> None:
        with contextlib.suppress(Boom):
            body.close()

    def worker(index: int, count: int) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        my_faults: collections.Counter[str] = collections.Counter()
        my_endings: collections.Counter[str] = collections.Counter()
        exempt = shed = 0
        start_barrier.wait()
        try:
            for fault, ending in zip(
                rng.choices(fault_names, fault_weights, k=count),
                rng.choices(ending_names, ending_weights, k=count),
                strict=True,
            ):
                # Parked bodies are closed later, by whichever thread comes by.
                if parked and rng.random() < UNPARK_SHARE:
                    with lock:
                        other = parked.popleft() if parked else None
                    if other is not None:
                        close(other)
                path = "/health/live" if rng.random() < EXEMPT_SHARE else "/"
                environ = {
                    "REQUEST_METHOD": "GET",
                    "PATH_INFO": path,
                    "REMOTE_ADDR": "127.0.0.1",
                    "soak.fault": fault,
                }
                seen: list[str] = []
                try:
                    body = middleware(environ, functools.partial(_record_status, seen))
                except Boom:
                    my_faults[fault] += 1
                    continue
                if path != "/":
                    exempt += 1
                    continue
                if not isinstance(body, ClosingBody):
                    # Turned away before the app: it must be the overload 503.
                    if seen != [STATUS] or b'"reason":"overload"' not in b"".join(body):
                        raise AssertionError(f"not admitted, yet not shed: {seen} {body!r}")
                    shed += 1
                    # A full gate is the point of parking; free one slot now and then.
                    if rng.random() < 0.5:
                        with lock:
                            other = parked.popleft() if parked else None
                        if other is not None:
                            close(other)
                    continue
                my_faults[fault] += 1
                my_endings[ending] += 1
                try:
                    if ending == "read_and_close":
                        try:
                            for _ in body:
                                pass
                        finally:
                            close(body)
                    elif ending == "close_after_one_chunk":
                        try:
                            next(iter(body))
                        finally:
                            close(body)
                    elif ending == "close_never_iterated":
                        close(body)
                    elif ending == "drop_unclosed":
                        del body
                    else:
                        with lock:
                            parked.append(body)
                            stale = parked.popleft() if len(parked) > limit else None
                        if stale is not None:
                            close(stale)
                except Boom:
                    pass
        except Exception as exc:  # anything else is a bug, reported and counted
            with lock:
                unexpected.append(f"thread {index}: {type(exc).__name__}: {exc}")
        with lock:
            faults.update(my_faults)
            endings.update(my_endings)
            totals["exempt"] += exempt
            totals["shed"] += shed

    def unraisable(info: Any) -> None:
        # A body dropped unclosed is closed by the middleware as it goes; a close() that
        # raises then has nowhere to raise to, so Python reports it here, as for generators.
        if not isinstance(info.exc_value, Boom):
            with lock:
                unexpected.append(f"unraisable: {info.exc_type.__name__}: {info.exc_value}")

    shares = [requests // threads + (1 if i < requests % threads else 0) for i in range(threads)]
    pool = [threading.Thread(target=worker, args=(i, n)) for i, n in enumerate(shares)]
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        for t in pool:
            t.start()
        start_barrier.wait()
        began = time.perf_counter()
        for t in pool:
            t.join()
        while parked:
            close(parked.popleft())
        seconds = time.perf_counter() - began
    finally:
        sys.unraisablehook = previous_hook
    # Read before any garbage collection: releasing must not depend on the cycle collector.
    return SoakResult(
        requests=requests,
        threads=threads,
        limit=limit,
        seconds=seconds,
        in_flight=gate.in_flight,
        peak=gate.peak,
        admitted=gate.admitted,
        rejected=gate.rejected,
        exempt=totals["exempt"],
        app_calls=app.calls,
        app_peak=app.peak,
        app_inside_at_end=app.inside,
        shed_seen=totals["shed"],
        faults=faults,
        endings=endings,
        unexpected=unexpected,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = soak(args.requests, threads=args.threads, limit=args.limit, seed=args.seed)
    print(result.report())
    return 1 if result.violations() else 0


if __name__ == "__main__":
    sys.exit(main())
