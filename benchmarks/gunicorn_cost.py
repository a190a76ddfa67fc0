"""What tidegate costs end to end under Gunicorn, admitted and shedding, against the baselines.

Run from a release build (``pip install .``, not an editable debug build)::

    python benchmarks/gunicorn_cost.py            # full run, a little over a minute
    python benchmarks/gunicorn_cost.py --quick    # a smoke run, a few seconds

Four Gunicorn servers (one ``gthread`` worker each) serve a tiny WSGI app four ways, and a
closed-loop load generator drives each in turn, interleaved over several rounds:

- bare app: answers ``ok``;
- tidegate, admitted: the same app in ``TideGateMiddleware(limit=1000)``, never full;
- tidegate, shedding: the middleware with its gate full, so every request gets tidegate's 503;
- static 503: a WSGI app that returns the same 503 bytes from a constant, the server's ceiling
  for answering 503s.

For each, the median over rounds of the answers per second, the latency, and the server
worker's CPU time per answer (read from ``/proc``; steadier than throughput on a busy machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from harness import Load, closed_loop, fmt, gunicorn, percent, ratio, serving, versions

from tidegate import CapacityGate
from tidegate.responses import ErrorPages
from tidegate.wsgi import TideGateMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

_OK_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "2")]


def bare(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", _OK_HEADERS)
    return [b"ok"]


_RENDERED = ErrorPages().render("overload", retry_after=1)


def static_503(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response(_RENDERED.status, list(_RENDERED.headers))
    return [_RENDERED.body]


# What Gunicorn serves: ``gunicorn_cost:<name>``.
admitted = TideGateMiddleware(bare, limit=1000)
_full = CapacityGate(1)
_held = _full.try_acquire()  # held for the life of the process: every request is shed
shedding = TideGateMiddleware(bare, gate=_full)

CANDIDATES = {
    "bare": "bare app",
    "admitted": "tidegate, admitted",
    "static_503": "static 503",
    "shedding": "tidegate, shedding",
}
EXPECTED = {"bare": 200, "admitted": 200, "static_503": 503, "shedding": 503}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 3)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 0.5)")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--threads", type=int, default=16, help="Gunicorn gthread threads")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    duration = args.duration or (0.5 if args.quick else 3.0)
    warmup = args.warmup or (0.2 if args.quick else 0.5)

    servers = {name: gunicorn(f"gunicorn_cost:{name}", threads=args.threads) for name in EXPECTED}
    loads: dict[str, list[Load]] = {name: [] for name in EXPECTED}
    with serving(list(servers.values())):
        for _ in range(rounds):
            for name, server in servers.items():
                load = closed_loop(
                    server,
                    "/",
                    connections=args.clients,
                    processes=args.processes,
                    warmup=warmup,
                    duration=duration,
                )
                if load.count(EXPECTED[name]) != load.count():
                    counts = {status: load.count(status) for status in load.latencies}
                    raise RuntimeError(f"{name}: expected only {EXPECTED[name]}s, got {counts}")
                loads[name].append(load)

    def median(name: str, figure: str) -> float | None:
        values = [
            value for value in (_figure(load, figure) for load in loads[name]) if value is not None
        ]
        return statistics.median(values) if values else None

    print(__doc__.splitlines()[0])
    print(versions())
    print(
        f"{args.clients} closed-loop clients ({args.processes} processes) on keep-alive "
        f"connections, Gunicorn gthread 1 worker x {args.threads} threads; median of "
        f"{rounds} interleaved round(s) of {duration:g} s after {warmup:g} s of warm-up"
    )
    print()
    columns = ("answers/s", "p50 ms", "p99 ms", "server CPU %", "server us/answer", "client %")
    print(f"{'candidate':22}" + "".join(f"{column:>17}" for column in columns))
    for name, label in CANDIDATES.items():
        cells = [
            fmt(median(name, "rate"), 0),
            fmt(median(name, "p50"), 2),
            fmt(median(name, "p99"), 2),
            fmt(median(name, "server"), 0),
            fmt(median(name, "server_us"), 1),
            fmt(median(name, "client"), 0),
        ]
        print(f"{label:22}" + "".join(f"{cell:>17}" for cell in cells))
    print()

    def compare(mine: str, base: str, what: str) -> None:
        rate = ratio(median(mine, "rate"), median(base, "rate"))
        mine_us, base_us = median(mine, "server_us"), median(base, "server_us")
        added = None if mine_us is None or base_us is None else mine_us - base_us
        print(
            f"{what}: {fmt(rate, 3)} x the throughput of the {CANDIDATES[base]}; "
            f"{fmt(added, 1)} us more server CPU per answer"
        )

    compare("admitted", "bare", "tidegate, admitted")
    compare("shedding", "static_503", "tidegate, shedding")
    busiest = max((load for values in loads.values() for load in values), key=Load.rate)
    print(
        f"Load generator at the busiest run: {busiest.rate():.0f} answers/s, "
        f"{busiest.client_us_per_answer():.0f} us CPU per answer, "
        f"{100 * busiest.client_cpu_share():.0f}% of a core per process; the server worker at "
        f"{fmt(percent(busiest.server_cpu_share()), 0)}% of a core."
    )
    return 0


def _figure(load: Load, figure: str) -> float | None:
    if figure == "rate":
        return load.rate()
    if figure == "p50":
        return load.percentile_ms(200, 50) or load.percentile_ms(503, 50)
    if figure == "p99":
        return load.percentile_ms(200, 99) or load.percentile_ms(503, 99)
    if figure == "server":
        return percent(load.server_cpu_share())
    if figure == "server_us":
        return load.server_us_per_answer()
    return 100 * load.client_cpu_share()


if __name__ == "__main__":
    sys.exit(main())
