"""Proof under load, ASGI: 8 database connections under Uvicorn, 64 clients, three ways to shed.

Run from a release build (``pip install .``, not an editable debug build)::

    python benchmarks/asgi_overload.py            # full run, about two minutes
    python benchmarks/asgi_overload.py --quick    # a smoke run, a few seconds

The scenario of ``overload.py`` on an ASGI app: ``/work`` takes one of 8 pooled "database
connections" (an ``asyncio.Queue`` of 8; each use holds its connection for 20 ms), so the app
can finish at most 400 requests a second. A real Uvicorn serves it (one process). 64
closed-loop clients on keep-alive connections hammer it, and every client honours a 503's
``Retry-After`` (a 503 without one is retried at once, as a client can do nothing better).

- ungated: the plain app; excess requests wait in the app for a connection.
- uvicorn --limit-concurrency 8: Uvicorn's own limit at the pool's size. Uvicorn refuses a
  request when it holds that many connections *or* tasks, so with 64 clients connected it
  refuses nearly everything, with a plain-text 503, no ``Retry-After``, and a closed connection.
- uvicorn --limit-concurrency 72: the smallest limit that lets all 64 connections in (64 +
  the pool). With every client connected, tasks never reach it: it never refuses.
- tidegate limit=8: the same app in ``tidegate.asgi.TideGateMiddleware(app, limit=8)``. Excess
  requests get tidegate's 503 at once, with ``Retry-After: 1``, on the kept-alive connection.

Each round runs the cases back to back; the table shows the median over rounds. The targets,
for tidegate: success p90 at most, and successes per second at least, those of Uvicorn's
``--limit-concurrency`` at the same limit; against the ungated app, those of ``overload.py``
(success p90 <= 0.35 x, successes >= 0.85 x); and every refusal carrying ``Retry-After``.
The exit status is 1 if any is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from harness import Load, closed_loop, fmt, medians, percent, ratio, serving, uvicorn, versions

from tidegate.asgi import TideGateMiddleware

POOL_SIZE = 8
QUERY_SECONDS = 0.020
CLIENTS = 64

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def make_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A bare ASGI app whose ``/work`` needs one of ``POOL_SIZE`` database connections."""
    pool: asyncio.Queue[int] = asyncio.Queue()
    for number in range(POOL_SIZE):
        pool.put_nowait(number)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/work":
            connection = await pool.get()  # waits, as a pool does, when all are in use
            try:
                await asyncio.sleep(QUERY_SECONDS)  # the query
            finally:
                pool.put_nowait(connection)
            body = b'{"rows":1}'
        else:
            body = b"ok"
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


# What Uvicorn serves: ``asgi_overload:ungated`` and ``asgi_overload:gated``.
ungated = make_app()
gated = TideGateMiddleware(make_app(), limit=POOL_SIZE, maintenance=False)

#: Each case: the app Uvicorn serves and Uvicorn's options.
CASES: dict[str, tuple[str, list[str]]] = {
    "ungated": ("ungated", []),
    "uvicorn limit 8": ("ungated", ["--limit-concurrency", str(POOL_SIZE)]),
    "uvicorn limit 72": ("ungated", ["--limit-concurrency", str(CLIENTS + POOL_SIZE)]),
    "tidegate limit=8": ("gated", []),
}
#: Uvicorn's own limit at tidegate's, and the smallest that lets every client connect.
SAME_LIMIT = "uvicorn limit 8"
NEVER_REFUSES = "uvicorn limit 72"
TIDEGATE = "tidegate limit=8"


def summarise(loads: list[Load]) -> dict[str, float | None]:
    """The median over rounds of every figure the table shows."""
    figures: dict[str, Callable[[Load], float | None]] = {
        "successes/s": lambda load: load.rate(200),
        "success p50 ms": lambda load: load.percentile_ms(200, 50),
        "success p90 ms": lambda load: load.percentile_ms(200, 90),
        "success p99 ms": lambda load: load.percentile_ms(200, 99),
        "503s/s": lambda load: load.rate(503),
        "503 p90 ms": lambda load: load.percentile_ms(503, 90),
        "503s with Retry-After %": _hinted_percent,
        "other answers": lambda load: float(load.count() - load.count(200) - load.count(503)),
        "reconnects/s": lambda load: load.reconnects / load.window,
        "server CPU %": lambda load: percent(load.server_cpu_share()),
    }
    return medians(loads, figures)


def _hinted_percent(load: Load) -> float | None:
    refused = load.count(503)
    return None if not refused else 100 * (refused - load.unhinted) / refused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 6)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 2)")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    duration = args.duration or (0.8 if args.quick else 6.0)
    warmup = args.warmup or (0.4 if args.quick else 2.0)

    servers = {
        case: uvicorn(f"asgi_overload:{app}", args=options)
        for case, (app, options) in CASES.items()
    }
    loads: dict[str, list[Load]] = {case: [] for case in CASES}
    refusals_unhinted = 0
    with serving(list(servers.values())):
        for _ in range(rounds):
            for case, server in servers.items():
                load = closed_loop(
                    server,
                    "/work",
                    connections=CLIENTS,
                    processes=args.processes,
                    warmup=warmup,
                    duration=duration,
                    honour_retry_after=True,
                )
                loads[case].append(load)
                if case == TIDEGATE:
                    refusals_unhinted += load.unhinted
                time.sleep(0.2)  # let requests the clients walked away from drain out

    summaries = {case: summarise(values) for case, values in loads.items()}
    print(__doc__.splitlines()[0])
    print(versions() + f", Uvicorn {_version('uvicorn')}")
    print(
        f"{CLIENTS} closed-loop clients on keep-alive connections honouring Retry-After, "
        f"Uvicorn 1 process, {POOL_SIZE} connections held {QUERY_SECONDS * 1000:.0f} ms each; "
        f"median of {rounds} interleaved round(s) of {duration:g} s measured after "
        f"{warmup:g} s of warm-up"
    )
    print()
    print(f"{'':26}" + "".join(f"{case:>19}" for case in CASES))
    for figure in summaries["ungated"]:
        digits = 1 if figure.endswith(" ms") else 0
        cells = "".join(f"{fmt(summaries[case][figure], digits):>19}" for case in CASES)
        print(f"{figure:26}{cells}")
    print()

    ours = summaries[TIDEGATE]
    p90, goodput = ours["success p90 ms"], ours["successes/s"]
    refused = sum(load.count(503) for load in loads[TIDEGATE])
    checks: list[tuple[str, float | None, str, bool]] = []
    for case, figure, at_most, bound in (
        (SAME_LIMIT, "success p90 ms", True, 1.0),
        (SAME_LIMIT, "successes/s", False, 1.0),
        ("ungated", "success p90 ms", True, 0.35),
        ("ungated", "successes/s", False, 0.85),
    ):
        share = ratio(ours[figure], summaries[case][figure])
        ok = share is not None and (share <= bound if at_most else share >= bound)
        label = f"{figure} / {case}'s"
        checks.append((label, share, f"{'<=' if at_most else '>='} {bound:.2f}", ok))
    print("Targets for tidegate:")
    for label, share, target, ok in checks:
        print(f"  {label:40}{fmt(share, 3):>8}   target {target}   {'met' if ok else 'MISSED'}")
    every = refusals_unhinted == 0
    print(
        f"  every refusal carried Retry-After: {refused - refusals_unhinted} of {refused}"
        f"{'':10}{'met' if every else 'MISSED'}"
    )
    never = summaries[NEVER_REFUSES]
    print()
    print(
        f"Against {NEVER_REFUSES} (it never refuses here, so it is the ungated app): success "
        f"p90 {fmt(ratio(p90, never['success p90 ms']), 2)} x, successes/s "
        f"{fmt(ratio(goodput, never['successes/s']), 3)} x. With 8 permits for 8 connections "
        f"a connection idles while its answer travels back and the client's next request "
        f"arrives; a queue in front of the pool never lets it idle."
    )
    missed = [label for label, _, _, ok in checks if not ok] + ([] if every else ["Retry-After"])
    print("targets met" if not missed else f"TARGETS MISSED: {'; '.join(missed)}")
    return 0 if not missed or args.quick else 1


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    sys.exit(main())
