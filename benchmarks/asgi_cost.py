"""What tidegate's ASGI middleware adds to one admitted request, against a careful pure-Python
ASGI gate, in process: a trivial app (start + one body) driven by asyncio, no server.

    python benchmarks/asgi_cost.py                  # about a minute
    python benchmarks/asgi_cost.py --quick          # a few seconds
    python benchmarks/asgi_cost.py --instructions   # and instruction counts, 1 more minute

Candidates run interleaved, round after round; each round times ``--requests`` requests per
candidate, and the medians over rounds are compared. The target: tidegate adds at most 0.3 x
what the careful gate adds over the bare app. Also shown: one refused request (overload 503)
through each. With ``--instructions`` each admitted candidate also runs under callgrind, which
counts instructions per request: the same on every run, however busy the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from harness import instruction_options, instructions_per_request

from tidegate.asgi import TideGateMiddleware

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
TARGET = 0.3

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/work",
    "raw_path": b"/work",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class CarefulGate:
    """The hand-written baseline: a counter, a refusal before the body is read, and a send
    wrapper that gives the slot back at the last body (or when the app ends)."""

    def __init__(self, app: App, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            headers = [(b"retry-after", b"1"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        self.in_flight += 1
        held = True

        async def wrapped(message: dict[str, Any]) -> None:
            nonlocal held
            await send(message)
            if held and message["type"] == "http.response.body" and not message.get("more_body"):
                held = False
                self.in_flight -= 1

        try:
            await self.app(scope, receive, wrapped)
        finally:
            if held:
                held = False
                self.in_flight -= 1


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    pass


async def per_request(app: App, n: int) -> float:
    """Nanoseconds per request over ``n`` requests."""
    started = time.perf_counter_ns()
    for _ in range(n):
        await app(SCOPE, receive, send)
    return (time.perf_counter_ns() - started) / n


ADMITTED = {
    "bare app": lambda: bare_app,
    "careful pure-Python gate": lambda: CarefulGate(bare_app, 4),
    "tidegate": lambda: TideGateMiddleware(bare_app, limit=4),
}


def run_one(name: str, n: int) -> None:
    """Serves ``n`` requests through one admitted candidate, after a warm-up: what
    ``--instructions`` runs under callgrind."""
    app = ADMITTED[name]()

    async def serve() -> None:
        await per_request(app, 200)
        await per_request(app, n)

    asyncio.run(serve())


def report_instructions() -> bool | None:
    """Prints instructions per admitted request; whether the target is met by them (``None``:
    not counted)."""
    count = instructions_per_request(__file__, ADMITTED)
    if count is None:
        return None
    bare = count["bare app"]
    print("ASGI, admitted request, instructions per request (callgrind)")
    print(f"{'':28} {'total':>9} {'added':>9}")
    for name, value in count.items():
        print(f"{name:28} {value:9.0f} {value - bare:9.0f}")
    ratio = (count["tidegate"] - bare) / (count["careful pure-Python gate"] - bare)
    print(f"by instructions: tidegate adds {ratio:.2f} x what the careful gate adds (<= {TARGET})")
    print()
    return ratio <= TARGET


async def measure(rounds: int, n: int) -> dict[str, list[float]]:
    careful, tidegate = CarefulGate(bare_app, 4), TideGateMiddleware(bare_app, limit=4)
    full_careful, full_tidegate = CarefulGate(bare_app, 0), TideGateMiddleware(bare_app, limit=1)
    full_tidegate.gate.try_acquire()  # held for good: every request through it is refused
    candidates: dict[str, App] = {
        "bare app": bare_app,
        "careful pure-Python gate": careful,
        "tidegate": tidegate,
        "careful gate, refusing": full_careful,
        "tidegate, refusing": full_tidegate,
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for app in candidates.values():
        await per_request(app, n // 10)  # warm-up
    for _ in range(rounds):
        for name, app in candidates.items():
            times[name].append(await per_request(app, n))
    assert tidegate.gate.in_flight == 0 and careful.in_flight == 0
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None)
    instruction_options(parser)
    args = parser.parse_args(argv)
    if args.run_one:
        run_one(args.run_one[0], int(args.run_one[1]))
        return 0
    by_instructions = report_instructions() if args.instructions else None
    rounds = args.rounds or (5 if args.quick else 21)
    n = args.requests or (5_000 if args.quick else 40_000)
    times = asyncio.run(measure(rounds, n))
    medians = {name: statistics.median(values) for name, values in times.items()}
    bare = medians["bare app"]
    print(f"ASGI, one request in process ({rounds} interleaved rounds of {n}; medians)")
    print(f"{'':28} {'ns/request':>11} {'ns added':>9}")
    for name, value in medians.items():
        added = "" if name.endswith("refusing") else f"{value - bare:9.0f}"
        print(f"{name:28} {value:11.0f} {added:>9}")
    ratio = (medians["tidegate"] - bare) / (medians["careful pure-Python gate"] - bare)
    met = ratio <= TARGET
    print(
        f"admitted: tidegate adds {ratio:.2f} x what the careful gate adds "
        f"(target <= {TARGET}): {'met' if met else 'missed'}"
    )
    refusal = medians["tidegate, refusing"] / medians["careful gate, refusing"]
    print(f"refused: tidegate's full 503 costs {refusal:.2f} x the careful gate's bare 503")
    # --quick only shows that it runs: too short a run to judge a target by.
    if by_instructions is not None:
        met = met and by_instructions
    return 0 if met or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
