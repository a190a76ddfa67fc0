"""The demo's scenes, in the order they play: each turns a part of the stage, sends bursts of
clients and says in one line what the table shows."""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime, timedelta, timezone

from tidegate.demo.app import (
    LIMIT,
    OVERLOAD_WORK_MS,
    POOL_QUERY_MS,
    POOL_SIZE,
    RESET_TIMEOUT,
    Stage,
    serve_auto,
    stop,
)
from tidegate.demo.clients import burst, readiness
from tidegate.demo.report import Row, Scene


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _ms(latency: dict[str, float] | None) -> str:
    return "-" if latency is None else f"{latency['p50']:.0f} ms"


def normal_load(stage: Stage) -> Scene:
    seen, _ = burst(stage.port, "/slow?ms=20", clients=4, each=10)
    row = Row("normal load", seen, readiness(stage.port))
    s = row.summary()
    return Scene(
        1,
        "normal load",
        [row],
        f"{s['ok']} of {s['requests']} served in {_ms(s['ok_ms'])}: "
        f"4 clients stay under the limit of {LIMIT}.",
    )


def overload(stage: Stage) -> Scene:
    seen, health = burst(
        stage.port,
        f"/slow?ms={OVERLOAD_WORK_MS}",
        clients=3 * LIMIT,
        each=3,
        during=lambda: readiness(stage.port),
    )
    row = Row("overload", seen, health or "")
    s = row.summary()
    low, high = s["retry_after"] or (0, 0)
    return Scene(
        2,
        "overload",
        [row],
        f"{s['unavailable'].get('overload', 0)} of {s['requests']} shed in "
        f"{_ms(s['unavailable_ms'])}, not queued behind {_ms(s['ok_ms'])} of work; "
        f"Retry-After {low}-{high} s; at most {stage.app.gate.peak} in the app.",
    )


def maintenance(stage: Stage) -> Scene:
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=15)
    stage.operator.enable(message="Upgrading the database", until=until)
    reached = stage.wait(lambda: stage.switch.active, "maintenance")
    seen, health = burst(stage.port, "/", clients=4, each=5, during=lambda: readiness(stage.port))
    on = Row("maintenance on", seen, health or "")
    stage.operator.disable()
    stage.wait(lambda: not stage.switch.active, "maintenance off")
    seen, _ = burst(stage.port, "/", clients=4, each=5)
    off = Row("maintenance off", seen, readiness(stage.port))
    return Scene(
        3,
        "maintenance",
        [on, off],
        f"the app saw the state file change after {reached * 1000:.0f} ms (it looks every "
        f"{stage.switch.poll_interval * 1000:.0f} ms); Retry-After counts down to "
        f"{until:%H:%M} UTC; /health stays 200.",
    )


def dependency(stage: Stage) -> Scene:
    stage.inventory.down = True
    seen, _ = burst(stage.port, "/stock", clients=4, each=6)
    down = Row("dependency down", seen, readiness(stage.port))
    stage.inventory.down = False
    steps = max(1, math.ceil(RESET_TIMEOUT / 0.1)) + 4
    seen, _ = burst(stage.port, "/stock", clients=4, each=steps, pause=0.1)
    back = Row("dependency back", seen, readiness(stage.port))
    s = down.summary()
    opened = stage.opened_after or 0
    # Calls already running when the breaker opened still fail slowly: say so, not that
    # every 500 took part in opening it.
    late = s["other"] - opened
    under_way = f" ({late} more {'was' if late == 1 else 'were'} under way)" if late > 0 else ""
    return Scene(
        4,
        "dependency",
        [down, back],
        f"{_count(opened, 'slow 500')} in a row opened the breaker{under_way}, then 503 "
        f"dependency in {_ms(s['unavailable_ms'])}; breaker {' -> '.join(stage.transitions)}.",
    )


def drain(stage: Stage) -> Scene:
    stage.operator.drain()
    stage.wait(lambda: stage.switch.draining, "drain")
    seen, health = burst(
        stage.port, "/slow?ms=20", clients=4, each=5, during=lambda: readiness(stage.port)
    )
    row = Row("draining", seen, health or "")
    stage.operator.undrain()
    stage.wait(lambda: not stage.switch.draining, "the end of drain")
    s = row.summary()
    return Scene(
        5,
        "drain",
        [row],
        f"/health said {row.health}, so the load balancer stops sending, while "
        f"{s['ok']} of {s['requests']} requests were still served.",
    )


def limit_sets_itself(stage: Stage) -> Scene:
    """A second app, a pool of a few database connections behind ``limit="auto"``, under 8 x
    the clients its pool can serve: the limit starts far too high and finds the pool."""
    app, running = serve_auto(stage.asgi)
    port = running.port
    limits: list[int] = []
    done = threading.Event()

    def watch() -> None:
        # The limit between probes: while the gate re-measures its baseline it holds the
        # limit low on purpose for a moment.
        while not done.wait(0.05):
            gate = app.gate
            if not gate.probing:
                limits.append(gate.limit)

    watcher = threading.Thread(target=watch, name="tidegate-demo-limit")
    watcher.start()
    started = time.perf_counter()
    try:
        first, _ = burst(port, "/", clients=8 * POOL_SIZE, each=30, pause=0.02)
        settled, _ = burst(port, "/", clients=8 * POOL_SIZE, each=30, pause=0.02)
    finally:
        done.set()
        watcher.join()
        stop(running)
    took = time.perf_counter() - started
    # The second half, its tenth at each end left out: where the limit stood, not its
    # passing dips.
    late = sorted(limits[len(limits) // 2 :]) or [app.gate.limit]
    trim = len(late) // 10
    late = late[trim : len(late) - trim]
    rows = [Row("auto: finding", first, ""), Row("auto: found", settled, "")]
    s = rows[1].summary()
    return Scene(
        6,
        "the limit sets itself",
        rows,
        f'a pool of {POOL_SIZE} connections ({POOL_QUERY_MS} ms a query), limit="auto": '
        f"from a default of 20 the limit settled around {late[len(late) // 2]} "
        f"({min(late)}-{max(late)}) in {took:.1f} s; "
        f"once found, "
        f"served in {_ms(s['ok_ms'])}, the rest shed in {_ms(s['unavailable_ms'])}.",
    )


SCENES = (normal_load, overload, maintenance, dependency, drain, limit_sets_itself)
