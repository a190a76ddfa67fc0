"""Proof under load: a Flask app with 8 database connections, 64 clients, with and without the gate.

Run from a release build (``pip install .``, not an editable debug build)::

    python benchmarks/overload.py            # full run, about two minutes
    python benchmarks/overload.py --quick    # a smoke run, a few seconds

The app's ``/work`` view takes one of 8 pooled "database connections" (a queue of 8; each use
holds its connection for 20 ms), so the app can finish at most 400 requests a second. A real
Gunicorn serves it: one ``gthread`` worker with 64 threads, so every client has a thread and
nothing waits in Gunicorn's own queue. 64 closed-loop clients (8 x the connections) hammer it.

- ungated: the plain app. Excess requests queue inside the app, waiting for a connection. The
  pool is a ``queue.Queue``, like SQLAlchemy's: a request that arrives just as a connection comes
  back can take it ahead of a waiter, which then waits a second turn, so the slowest tenth or
  so of requests take about twice as long as the rest.
- gated: the same app in ``TideGateMiddleware(app, limit=8)``. Excess requests get a 503 at once.
  Shed clients either retry at once (the harshest case for the server: the retries never stop)
  or honour ``Retry-After`` (1 s, the default) before their next request.

Each round runs the three cases back to back; the table shows the median over rounds. The
targets, for each gated case against the ungated app: success p90 <= 0.35 x, 503 p90 <= 0.1 x
the ungated success p90, and successes >= 0.85 x. The exit status is 1 if any is missed.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask
from harness import Load, closed_loop, fmt, gunicorn, medians, percent, ratio, serving, versions

from tidegate.wsgi import TideGateMiddleware

POOL_SIZE = 8
QUERY_SECONDS = 0.020


def make_app() -> Flask:
    """A Flask app whose ``/work`` view needs one of ``POOL_SIZE`` database connections."""
    app = Flask("overload")
    pool: queue.Queue[int] = queue.Queue()
    for number in range(POOL_SIZE):
        pool.put(number)

    @app.get("/work")
    def work() -> dict[str, int]:
        connection = pool.get()  # waits, as a pool does, when all are in use
        try:
            time.sleep(QUERY_SECONDS)  # the query
        finally:
            pool.put(connection)
        return {"rows": 1}

    @app.get("/ping")
    def ping() -> str:
        return "ok"

    return app


# What Gunicorn serves: ``overload:ungated`` and ``overload:gated``.
ungated = make_app()
gated = TideGateMiddleware(make_app(), limit=POOL_SIZE)

CASES = ("ungated", "gated, retry at once", "gated, honour Retry-After")


@dataclass(frozen=True)
class Target:
    """``figure`` of a gated case over ``baseline`` of the ungated one, bounded by ``limit``."""

    label: str
    figure: str
    baseline: str
    limit: float
    at_most: bool

    @property
    def bound(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.limit:.2f}"

    def met(self, ratio: float | None) -> bool:
        if ratio is None:
            return False
        return ratio <= self.limit if self.at_most else ratio >= self.limit


TARGETS = (
    Target("success p90 / ungated success p90", "success p90 ms", "success p90 ms", 0.35, True),
    Target("503 p90 / ungated success p90", "503 p90 ms", "success p90 ms", 0.10, True),
    Target("successes / ungated successes", "successes/s", "successes/s", 0.85, False),
)


def summarise(loads: list[Load]) -> dict[str, float | None]:
    """The median over rounds of every figure the table shows."""
    figures: dict[str, Callable[[Load], float | None]] = {
        "successes/s": lambda load: load.rate(200),
        "success p50 ms": lambda load: load.percentile_ms(200, 50),
        "success p90 ms": lambda load: load.percentile_ms(200, 90),
        "success p99 ms": lambda load: load.percentile_ms(200, 99),
        "503s/s": lambda load: load.rate(503),
        "503 p50 ms": lambda load: load.percentile_ms(503, 50),
        "503 p90 ms": lambda load: load.percentile_ms(503, 90),
        "503 p99 ms": lambda load: load.percentile_ms(503, 99),
        "other answers": lambda load: float(load.count() - load.count(200) - load.count(503)),
        "server worker CPU %": lambda load: percent(load.server_cpu_share()),
        "server CPU us per answer": lambda load: load.server_us_per_answer(),
        "client CPU % per process": lambda load: 100 * load.client_cpu_share(),
        "client CPU us per answer": lambda load: load.client_us_per_answer(),
    }
    return medians(loads, figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 6)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 2)")
    parser.add_argument("--clients", type=int, default=64, help="closed-loop clients")
    parser.add_argument("--threads", type=int, default=64, help="Gunicorn gthread threads")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    duration = args.duration or (0.8 if args.quick else 6.0)
    warmup = args.warmup or (0.4 if args.quick else 2.0)

    servers = {
        name: gunicorn(f"overload:{name}", threads=args.threads) for name in ("ungated", "gated")
    }

    def run(name: str, path: str, honour: bool = False, seconds: float = duration) -> Load:
        load = closed_loop(
            servers[name],
            path,
            connections=args.clients,
            processes=args.processes,
            warmup=warmup,
            duration=seconds,
            honour_retry_after=honour,
        )
        time.sleep(0.2)  # let requests the clients walked away from drain out of the app
        return load

    loads: dict[str, list[Load]] = {case: [] for case in CASES}
    with serving(list(servers.values())):
        ceiling = run("ungated", "/ping", seconds=min(duration, 3.0))
        for _ in range(rounds):
            loads[CASES[0]].append(run("ungated", "/work"))
            loads[CASES[1]].append(run("gated", "/work"))
            loads[CASES[2]].append(run("gated", "/work", honour=True))

    summaries = {case: summarise(values) for case, values in loads.items()}
    print(__doc__.splitlines()[0])
    print(versions())
    print(
        f"{args.clients} closed-loop clients on keep-alive connections, Gunicorn gthread "
        f"1 worker x {args.threads} threads, {POOL_SIZE} connections held "
        f"{QUERY_SECONDS * 1000:.0f} ms each; median of {rounds} interleaved round(s) of "
        f"{duration:g} s measured after {warmup:g} s of warm-up"
    )
    print()
    print(f"{'':26}" + "".join(f"{case:>27}" for case in CASES))
    for figure in summaries[CASES[0]]:
        digits = 0 if figure.endswith("/s") or " us " in figure or figure.startswith("other") else 1
        cells = "".join(f"{fmt(summaries[case][figure], digits):>27}" for case in CASES)
        print(f"{figure:26}{cells}")
    print()

    base = summaries[CASES[0]]
    missed = []
    for case in CASES[1:]:
        print(f"Targets, {case}, against ungated:")
        for target in TARGETS:
            value = ratio(summaries[case][target.figure], base[target.baseline])
            ok = target.met(value)
            print(
                f"  {target.label:36}{fmt(value, 3):>8}   target {target.bound}   "
                + ("met" if ok else "MISSED")
            )
            if not ok and case not in missed:
                missed.append(case)
    print()

    storm = loads[CASES[1]]
    shed_clients = args.clients - POOL_SIZE
    answers = statistics.median(load.rate() for load in storm)
    print(
        f"With retries at once, {shed_clients} shed clients always have a request in the "
        f"server, so by Little's law a 503 waits about {shed_clients} / {answers:.0f} "
        f"answers/s = {1000 * shed_clients / answers:.1f} ms however cheap tidegate's part "
        f"is: that case measures Gunicorn's ceiling (see gunicorn_cost.py) as much as the gate."
    )
    print()

    busiest = max((load for values in loads.values() for load in values), key=Load.rate)
    print(
        f"Load generator: {args.processes} processes, each driving its share of the "
        f"{args.clients} connections from one selector loop over raw sockets (closed loop)."
    )
    print(
        f"  Against /ping (a trivial Flask view, same server): {ceiling.rate():.0f} answers/s; "
        f"client {ceiling.client_us_per_answer():.0f} us CPU per answer, "
        f"{100 * ceiling.client_cpu_share():.0f}% of a core per process; "
        f"server worker {fmt(percent(ceiling.server_cpu_share()), 0)}% of a core."
    )
    client_ceiling = args.processes * 1e6 / max(ceiling.client_us_per_answer(), 1e-9)
    print(
        f"  At that cost per answer the load generator alone could send about "
        f"{client_ceiling:.0f} answers/s with one core per process; the busiest run above "
        f"needed {busiest.rate():.0f}/s, with the client at "
        f"{100 * busiest.client_cpu_share():.0f}% of a core per process and the server "
        f"worker at {fmt(percent(busiest.server_cpu_share()), 0)}%."
    )
    print("targets met" if not missed else f"TARGETS MISSED: {'; '.join(missed)}")
    return 0 if not missed or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
