"""A fleet on one Redis: three Gunicorn servers (standing in for three hosts, each in a folder
of its own, two workers each) follow one store. ``tidegate maintenance on --state redis://...``
reaches every worker of every server, ``off`` brings them back, and ``drain`` fails readiness
everywhere while requests are still served; ``status`` lists every worker. A breaker tripped in
one worker of one server makes every worker of the others fail fast."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest
from gunicorn_apps import CALL_PATH, POLL_ENV, SEEN_PATH, STORE_ENV, TRIP_PATH
from redis_server import RedisServer
from servers import GunicornServer, serving, wait_for

pytestmark = pytest.mark.server

SERVERS = 3
WORKERS = 2


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[tuple[str, Sequence[GunicornServer]]]:
    uri = redis_server.uri(key="fleet-test")
    # A poll interval far longer than the test waits: only the change notice can be this fast.
    env = {STORE_ENV: uri, POLL_ENV: "30"}
    servers = [
        GunicornServer("gunicorn_apps:fleet_application", workers=WORKERS, threads=4, env=env)
        for _ in range(SERVERS)
    ]
    with serving(servers):
        yield uri, servers


def tidegate(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "tidegate", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def views(servers: Sequence[GunicornServer]) -> dict[int, dict[str, object]]:
    """What each worker of each server says its switch sees, by pid: asks each server until
    every one of its workers has answered (the kernel spreads connections among them)."""
    seen: dict[int, dict[str, object]] = {}
    for server in servers:
        pids = set(server.worker_pids())
        for _ in range(400):
            reply = server.fetch(SEEN_PATH).json()
            seen[reply["pid"]] = reply
            if pids <= seen.keys():
                break
        assert pids <= seen.keys(), f"not every worker of {server.url} answered"
    return seen


def all_workers(servers: Sequence[GunicornServer]) -> set[int]:
    return {pid for server in servers for pid in server.worker_pids()}


def test_one_switch_reaches_every_worker_of_every_server(
    fleet: tuple[str, Sequence[GunicornServer]],
) -> None:
    uri, servers = fleet
    workers = all_workers(servers)
    assert len(workers) == SERVERS * WORKERS
    assert all(server.fetch("/work?ms=1").status == 200 for server in servers)

    tidegate("maintenance", "on", "--state", uri, "--message", "Fleet upgrade", "--for", "10m")
    wait_for(
        lambda: views(servers),
        lambda seen: all(view["active"] for view in seen.values()),
        timeout=5,
        what="maintenance in every worker",
    )
    for server in servers:
        reply = server.fetch("/work?ms=1", headers={"Accept": "application/json"})
        assert reply.status == 503
        assert reply.json()["message"] == "Fleet upgrade"
        assert 0 < int(reply.headers["Retry-After"]) <= 600

    status = json.loads(tidegate("maintenance", "status", "--json", "--state", uri).stdout)
    listed = wait_for(
        lambda: json.loads(tidegate("maintenance", "status", "--json", "--state", uri).stdout),
        lambda doc: {p["pid"] for p in doc["processes"]} >= workers,
        timeout=5,
        what="a heartbeat from every worker",
    )["processes"]
    assert {p["pid"] for p in listed} == workers, "the fleet view lists the workers, no more"
    assert all(p["active"] for p in listed if p["pid"] in workers)
    assert status["active"] is True

    tidegate("maintenance", "off", "--state", uri)
    wait_for(
        lambda: views(servers),
        lambda seen: not any(view["active"] for view in seen.values()),
        timeout=5,
        what="maintenance off in every worker",
    )
    assert all(server.fetch("/work?ms=1").status == 200 for server in servers)


def test_drain_fails_readiness_everywhere_while_requests_are_served(
    fleet: tuple[str, Sequence[GunicornServer]],
) -> None:
    uri, servers = fleet
    assert all(server.fetch("/health").status == 200 for server in servers)
    tidegate("drain", "--state", uri)
    wait_for(
        lambda: views(servers),
        lambda seen: all(view["draining"] for view in seen.values()),
        timeout=5,
        what="every worker draining",
    )
    for server in servers:
        for _ in range(2 * WORKERS):
            health = server.fetch("/health")
            assert health.status == 503 and health.json()["reason"] == "draining"
            assert server.fetch("/work?ms=1").status == 200
    tidegate("drain", "--off", "--state", uri)
    wait_for(
        lambda: views(servers),
        lambda seen: not any(view["draining"] for view in seen.values()),
        timeout=5,
    )


def test_a_breaker_tripped_in_one_server_opens_it_in_the_others(
    fleet: tuple[str, Sequence[GunicornServer]],
) -> None:
    _, servers = fleet
    assert all(server.fetch(CALL_PATH).status == 200 for server in servers)
    assert servers[0].fetch(TRIP_PATH).status == 200

    def refusals(server: GunicornServer) -> list[int]:
        return [server.fetch(CALL_PATH).status for _ in range(8 * WORKERS)]

    for server in servers[1:]:
        # Every worker (the kernel spreads the connections) answers with the dependency 503.
        replies = wait_for(
            lambda server=server: refusals(server),
            lambda statuses: set(statuses) == {503},
            timeout=5,
            what="the trip reaching every worker",
        )
        assert len(replies) == 8 * WORKERS
        reply = server.fetch(CALL_PATH, headers={"Accept": "application/json"})
        assert reply.json()["reason"] == "dependency"
        assert int(reply.headers["Retry-After"]) > 0
