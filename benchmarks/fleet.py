"""A fleet on one Redis: what a store costs a request, how fast a change reaches every worker,
and what happens to requests when Redis dies under load.

    python benchmarks/fleet.py            # full run, about a minute
    python benchmarks/fleet.py --quick    # a smoke run

Needs ``redis-server`` (``sh tools/test-servers.sh`` installs it). Three parts:

1. Per-request cost, in process: ``TideGateMiddleware`` around a bare app with its maintenance
   switch on a state file, then on a Redis store, in interleaved rounds (each round starts
   with the other one). Target: the store costs at most 1.1 x the file.
2. Propagation: three Gunicorn servers of two workers each, every worker following one Redis
   key with ``poll_interval=1.0``. A change is written (a) behind tidegate's back, with no
   change notice, so only polling finds it, and (b) by ``MaintenanceSwitch.enable()``, which
   announces it. Every worker records, in its heartbeat, when its poll saw the change; the
   time to the last worker is the propagation time. Targets: (a) at most ``poll_interval`` +
   0.5 s, (b) under 0.2 s.
3. Redis killed mid-run: closed-loop clients on all three servers (as many as the gates admit,
   so every request should succeed), one run with Redis up throughout and one with Redis
   killed halfway through the measured window. Targets: zero failed requests, and the p99
   of the run with the kill at most 1.25 x the run without (the two are measured back to back
   on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness import Load, closed_loop, fmt, gunicorn, serving, versions
from redis_server import RedisServer, redis_missing
from request_cost import added, measure

from tidegate import MaintenanceSwitch
from tidegate.wsgi import TideGateMiddleware

POLL_INTERVAL = 1.0
SERVERS = 3
WORKERS = 2
#: Per worker: the gate's limit and its threads, so the clients below are never shed.
LIMIT = 4


def bare_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def cost(redis: RedisServer, rounds: int, n: int) -> dict[str, float]:
    folder = tempfile.TemporaryDirectory()
    apps = {
        "bare app": bare_app,
        "state file": TideGateMiddleware(
            bare_app, limit=64, maintenance=str(Path(folder.name) / "state.json")
        ),
        "Redis store": TideGateMiddleware(bare_app, limit=64, maintenance=redis.uri(key="cost")),
    }
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    samples = measure({name: (app, environ, n) for name, app in apps.items()}, rounds)
    folder.cleanup()
    return {name: added(samples, name, "bare app") for name in ("state file", "Redis store")}


def last_seen(reader: MaintenanceSwitch, workers: int, active: bool, since: float) -> float:
    """Seconds from ``since`` until the last of ``workers`` processes polled and saw
    ``active``, from their heartbeats."""
    deadline = time.monotonic() + POLL_INTERVAL * 3 + 5
    while time.monotonic() < deadline:
        beats = json.loads(reader._fleet() or "[]")
        seen = [b["polled_at"] for b in beats if b["active"] == active and b["polled_at"] >= since]
        if len(seen) >= workers:
            return max(sorted(seen)[:workers]) - since
        time.sleep(0.02)
    raise RuntimeError("not every worker saw the change")


def propagation(redis: RedisServer, uri: str, repeats: int) -> dict[str, list[float]]:
    reader = MaintenanceSwitch(uri, env_var=None, _follow=False)
    workers = SERVERS * WORKERS
    times: dict[str, list[float]] = {"polling only": [], "change notice": []}
    for turn in range(repeats):
        for how in ("polling only", "change notice"):
            on = turn % 2 == 0
            # Let every worker settle, then write at a random point of their poll cycles.
            time.sleep(POLL_INTERVAL * (1 + random.random()))
            since = time.time()
            if how == "polling only":
                document = json.dumps({"version": 1, "active": on})
                redis.cli("SET", "fleet-bench", document)
            elif on:
                reader.enable()
            else:
                reader.disable()
            times[how].append(last_seen(reader, workers, on, since))
            # Put the other writer's view in line for the next change.
            if how == "polling only":
                redis.cli("DEL", "fleet-bench")
                if on:
                    reader.enable()
    reader.disable()
    return times


def failures(load: Load) -> int:
    return load.errors + sum(len(v) for status, v in load.latencies.items() if status != 200)


def killed_under_load(
    redis: RedisServer, servers: list[Any], duration: float, kill: bool
) -> tuple[int, int, float | None]:
    """Successes, failures and the success p99 (ms) over all three servers."""
    loads: list[Load] = []
    warmup = 0.5

    def drive(server: Any) -> None:
        loads.append(
            closed_loop(
                server,
                "/work?ms=2",
                connections=WORKERS * LIMIT,
                processes=1,
                warmup=warmup,
                duration=duration,
            )
        )

    threads = [threading.Thread(target=drive, args=(s,)) for s in servers]
    for thread in threads:
        thread.start()
    if kill:
        time.sleep(warmup + duration / 2)
        redis.stop()
    for thread in threads:
        thread.join()
    merged = Load(window=duration, connections=0, processes=1)
    for load in loads:
        for status, values in load.latencies.items():
            merged.latencies.setdefault(status, []).extend(values)
        merged.errors += load.errors
    return merged.count(200), failures(merged), merged.percentile_ms(200, 99)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    why = redis_missing()
    if why is not None:
        print(f"fleet.py needs Redis: {why}", file=sys.stderr)
        return 2
    print(versions())
    missed: list[str] = []

    with RedisServer() as redis:
        added = cost(redis, rounds=3 if args.quick else 15, n=20_000 if args.quick else 200_000)
        ratio = added["Redis store"] / added["state file"]
        print("\n1. Admitted per-request cost added to a bare app (median of paired rounds)")
        print(f"   state file  {added['state file']:.3f} us")
        print(f"   Redis store {added['Redis store']:.3f} us   ratio {ratio:.2f} (target <= 1.1)")
        if ratio > 1.1:
            missed.append("cost")

        uri = redis.uri(key="fleet-bench")
        env = {"TIDEGATE_TEST_STORE": uri, "TIDEGATE_TEST_POLL": str(POLL_INTERVAL)}
        servers = [
            gunicorn("gunicorn_apps:fleet_application", workers=WORKERS, threads=LIMIT, env=env)
            for _ in range(SERVERS)
        ]
        for server in servers:
            server.chdir = Path(__file__).resolve().parent.parent / "tests"
        with serving(servers):
            times = propagation(redis, uri, repeats=2 if args.quick else 6)
            workers = SERVERS * WORKERS
            print(f"\n2. Propagation to the last of {workers} workers on {SERVERS} servers")
            for how, limit in (("polling only", POLL_INTERVAL + 0.5), ("change notice", 0.2)):
                values = times[how]
                print(
                    f"   {how:<14} median {statistics.median(values):.3f} s, "
                    f"max {max(values):.3f} s (target <= {limit:.1f} s)"
                )
                if max(values) > limit:
                    missed.append(how)

            duration = 2.0 if args.quick else 8.0
            print(f"\n3. Clients on all three servers for {duration:.0f} s (success p99)")
            rows = []
            for kill in (False, True):
                ok, failed, p99 = killed_under_load(redis, servers, duration, kill)
                label = "Redis killed halfway" if kill else "Redis up"
                rows.append(p99)
                print(f"   {label:<22} {ok:>7} ok  {failed:>4} failed  p99 {fmt(p99)} ms")
                if failed:
                    missed.append(f"{label}: failures")
            if rows[0] and rows[1] and rows[1] > rows[0] * 1.25:
                missed.append("p99 after the kill")
            print(f"   p99 ratio {fmt((rows[1] or 0) / (rows[0] or 1), 2)} (target <= 1.25)")
    print()
    print("targets met" if not missed else "TARGETS MISSED: " + ", ".join(missed))
    return 0 if args.quick or not missed else 1


if __name__ == "__main__":
    sys.exit(main())
