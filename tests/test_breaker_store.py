"""Breakers that share their state through a real Redis: a trip anywhere opens them all, the
fleet probes under reservations, and a store that fails leaves each breaker working locally
without making a call wait."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
from conftest import seconds_until
from redis_server import RedisServer

from tidegate import CircuitBreaker, CircuitOpenError

# How late a change may be seen beyond the poll interval on a busy machine.
SLACK = 1.0


class Down(Exception):
    """The dependency failing."""


def fail() -> None:
    raise Down


def store_warnings(caplog: pytest.LogCaptureFixture, server: RedisServer, word: str) -> list[str]:
    """The warnings about `server` that say `word` (breakers of earlier tests that are not
    collected yet may still be warning about their own servers)."""
    port = f":{server.port}/"
    return [
        message
        for r in caplog.records
        if r.name == "tidegate" and r.levelno == logging.WARNING
        for message in [r.getMessage()]
        if word in message and port in message
    ]


def trip(breaker: CircuitBreaker) -> None:
    with pytest.raises(Down):
        breaker.call(fail)


@contextmanager
def child(code: str) -> Iterator[subprocess.Popen[str]]:
    """A separate Python process running `code`, killed afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_a_trip_opens_every_breaker_of_that_name_at_once_by_notice(
    redis_server: RedisServer,
) -> None:
    uri = redis_server.uri()
    a = CircuitBreaker("db", store=uri, failure_threshold=1, reset_timeout=30, poll_interval=5)
    b = CircuitBreaker("db", store=uri, failure_threshold=1, reset_timeout=30, poll_interval=5)
    other = CircuitBreaker("cache", store=uri, failure_threshold=1, poll_interval=5)
    # Let b subscribe before the trip (a real fleet has been running for a while).
    time.sleep(0.5)
    trip(a)
    # Far sooner than the 5 s poll: the change notice brings it.
    took = seconds_until(lambda: b.state == "open", 5)
    assert took < 1.0
    with pytest.raises(CircuitOpenError) as refused:
        b.call(lambda: "never runs")
    assert refused.value.breaker is b
    assert 25 < refused.value.retry_after <= 30
    assert other.state == "closed"
    record = json.loads(redis_server.cli("GET", "tidegate:breaker:db"))
    assert record["state"] == "open" and record["open_for"] == 30


def test_an_open_record_without_a_notice_is_seen_within_poll_interval(
    redis_server: RedisServer,
) -> None:
    b = CircuitBreaker("db", store=redis_server.uri(key="app"), poll_interval=0.2)
    record = {"state": "open", "until": time.time() + 30, "open_for": 30, "by": "elsewhere:1:0"}
    # Written by hand: no PUBLISH, so only the poll can find it.
    redis_server.cli("SET", "app:db", json.dumps(record))
    took = seconds_until(lambda: b.state == "open", 0.2 + SLACK)
    assert 25 < b.retry_after <= 30
    # Deleting it closes the fleet.
    redis_server.cli("DEL", "app:db")
    took += seconds_until(lambda: b.state == "closed", 0.2 + SLACK)
    assert took < 2 * (0.2 + SLACK)


def test_a_trip_in_another_process_opens_this_one(redis_server: RedisServer) -> None:
    uri = redis_server.uri()
    here = CircuitBreaker("payments", store=uri, reset_timeout=30, poll_interval=0.5)
    code = f"""
        import time
        from tidegate import CircuitBreaker
        breaker = CircuitBreaker("payments", store={uri!r}, failure_threshold=1, reset_timeout=30)
        try:
            breaker.call(lambda: 1 / 0)
        except ZeroDivisionError:
            pass
        print(breaker.state)
        time.sleep(60)
    """
    with child(code) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "open"
        seconds_until(lambda: here.state == "open", 0.5 + SLACK)
        with pytest.raises(CircuitOpenError):
            here.call(lambda: "never runs")


def test_half_open_lets_exactly_one_probe_through_across_the_fleet(
    redis_server: RedisServer,
) -> None:
    uri = redis_server.uri()
    breakers = [
        CircuitBreaker(
            "db",
            store=uri,
            failure_threshold=1,
            reset_timeout=0.5,
            half_open_max_calls=1,
            poll_interval=0.1,
        )
        for _ in range(4)
    ]
    time.sleep(0.3)
    trip(breakers[0])
    for breaker in breakers:
        seconds_until(lambda breaker=breaker: breaker.state == "open", 0.1 + SLACK)
    probes: list[int] = []
    release = threading.Event()
    done = threading.Event()

    def probe(index: int) -> int:
        probes.append(index)
        release.wait(10)
        return index

    def caller(index: int, breaker: CircuitBreaker) -> None:
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            try:
                breaker.call(probe, index)
                return
            except CircuitOpenError:
                time.sleep(0.005)

    threads = [
        threading.Thread(target=caller, args=(i, breaker), daemon=True)
        for i, breaker in enumerate(breakers)
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    seconds_until(lambda: len(probes) >= 1, 0.5 + 2 * SLACK)
    # The open period is long over on every breaker; callers keep trying all along.
    time.sleep(1.0)
    assert len(probes) == 1, probes
    prober = breakers[probes[0]]
    others = [b for b in breakers if b is not prober]
    assert all(b.state == "half_open" for b in others)
    release.set()
    seconds_until(lambda: prober.state == "closed", SLACK)
    for breaker in others:
        seconds_until(lambda breaker=breaker: breaker.state == "closed", 0.1 + SLACK)
    done.set()
    for thread in threads:
        thread.join(10)
    assert redis_server.cli("KEYS", "tidegate:breaker:db*").strip() == ""


def test_a_probe_reservation_of_a_killed_process_expires(redis_server: RedisServer) -> None:
    uri = redis_server.uri()
    options = "failure_threshold=1, reset_timeout=0.3, probe_timeout=1.0, poll_interval=0.1"
    code = f"""
        import time
        from tidegate import CircuitBreaker
        breaker = CircuitBreaker("db", store={uri!r}, {options})
        time.sleep(0.3)
        try:
            breaker.call(lambda: 1 / 0)
        except ZeroDivisionError:
            pass
        def hang():
            print("probing")
            time.sleep(60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                breaker.call(hang)
            except Exception:
                time.sleep(0.01)
    """
    here = CircuitBreaker(
        "db",
        store=uri,
        failure_threshold=1,
        reset_timeout=0.3,
        probe_timeout=1.0,
        poll_interval=0.1,
    )
    calls: list[float] = []
    with child(code) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "probing"
        holder = redis_server.cli("GET", "tidegate:breaker:db:probe:0").strip()
        assert holder.split(":")[1] == str(process.pid)
        # The child holds the fleet's only probe: this process is refused.
        with pytest.raises(CircuitOpenError):
            here.call(calls.append, time.monotonic())
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed = time.monotonic()

        def probed() -> bool:
            try:
                here.call(calls.append, time.monotonic())
            except CircuitOpenError:
                return False
            return True

        # probe_timeout plus two poll intervals, and a poll to see it gone.
        seconds_until(probed, 1.0 + 3 * 0.1 + SLACK)
    assert len(calls) == 1
    assert calls[0] - killed < 1.0 + 3 * 0.1 + SLACK
    assert here.state == "closed"


def timed_calls(breaker: CircuitBreaker, count: int) -> float:
    """The slowest of `count` calls through `breaker`, seconds."""
    slowest = 0.0
    for _ in range(count):
        start = time.perf_counter()
        with suppress(CircuitOpenError):
            breaker.call(lambda: None)
        slowest = max(slowest, time.perf_counter() - start)
    return slowest


@pytest.mark.parametrize("fault", ["pause", "stop"])
def test_a_store_that_fails_leaves_the_breaker_local_and_never_slows_a_call(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    caplog.set_level(logging.INFO, logger="tidegate")
    breaker = CircuitBreaker(
        "db", store=redis_server.uri(), failure_threshold=2, reset_timeout=0.2, poll_interval=0.1
    )
    time.sleep(0.3)
    if fault == "pause":
        redis_server.pause()
    else:
        redis_server.stop()
    try:
        # The store thread is stuck in a 1 s timeout or finds the port closed; calls are not.
        deadline = time.monotonic() + 2.5
        slowest = 0.0
        while time.monotonic() < deadline:
            slowest = max(slowest, timed_calls(breaker, 200))
            time.sleep(0.01)
        assert slowest < 0.05, f"a call took {slowest * 1000:.1f} ms"
        seconds_until(lambda: store_warnings(caplog, redis_server, "is lost"), SLACK + 1)
        # Locally it still trips, refuses, and probes on its own after reset_timeout.
        trip(breaker)
        trip(breaker)
        assert breaker.state == "open"
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: None)
        time.sleep(0.25)
        assert breaker.call(lambda: "probe") == "probe"
        assert breaker.state == "closed"
    finally:
        if fault == "pause":
            redis_server.resume()
        else:
            redis_server.start()
    seconds_until(lambda: store_warnings(caplog, redis_server, "is back"), 1 + SLACK)
    time.sleep(0.3)
    assert len(store_warnings(caplog, redis_server, "is lost")) == 1
    assert len(store_warnings(caplog, redis_server, "is back")) == 1
    # Shared again: a trip here reaches the store.
    trip(breaker)
    trip(breaker)
    seconds_until(lambda: redis_server.cli("EXISTS", "tidegate:breaker:db").strip() == "1", SLACK)


def test_a_wrong_password_is_a_lost_store_told_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tidegate")
    with RedisServer(password="right") as server:
        breaker = CircuitBreaker(
            "db", store=server.uri(password="wrong"), failure_threshold=1, poll_interval=0.05
        )
        seconds_until(lambda: store_warnings(caplog, server, "is lost"), SLACK)
        time.sleep(0.3)
        (warning,) = store_warnings(caplog, server, "is lost")
        assert "wrong" not in warning and "***" in warning
        trip(breaker)
        assert breaker.state == "open"


def test_garbage_at_the_key_is_told_once_and_ignored(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidegate")
    redis_server.cli("SET", "tidegate:breaker:db", "not json")
    breaker = CircuitBreaker("db", store=redis_server.uri(), poll_interval=0.05)
    seconds_until(lambda: store_warnings(caplog, redis_server, "holds no breaker record"), SLACK)
    time.sleep(0.3)
    assert len(store_warnings(caplog, redis_server, "holds no breaker record")) == 1
    assert breaker.state == "closed"
    assert breaker.call(lambda: 7) == 7
