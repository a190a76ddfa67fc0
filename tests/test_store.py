"""Maintenance and drain through a real Redis: every switch on the store follows one write,
requests never wait on the store, and a store that is stopped, paused, wrong or garbage leaves
the last known state standing with one warning when it is lost and one when it is back."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import drive, environ_for, need_redis
from redis_server import HOST, RedisServer
from servers import wait_for

from tidegate import MaintenanceSwitch
from tidegate.wsgi import TideGateMiddleware


def ok_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"ok"]


def store_warnings(caplog: pytest.LogCaptureFixture, port: int) -> list[str]:
    """What the ``tidegate`` logger said about the store on ``port`` (switches of earlier
    tests may still be saying things about theirs)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tidegate" and f":{port}/" in r.getMessage()
    ]


@pytest.fixture
def warnings_caught(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="tidegate")
    return caplog


def test_a_write_reaches_every_switch_on_the_store_at_once(redis_server: RedisServer) -> None:
    uri = redis_server.uri(key="shop")
    writer = MaintenanceSwitch(uri, env_var=None, poll_interval=30)
    readers = [MaintenanceSwitch(uri, env_var=None, poll_interval=30) for _ in range(3)]
    writer.enable(message="Moving the database", retry_after=120)
    # The poll interval is 30 s: only the change notice can bring this within seconds.
    wait_for(lambda: [r.active for r in readers], all, timeout=2, what="the notice")
    status = readers[0].status()
    assert (status.source, status.message, status.retry_after.delay()) == (
        "redis",
        "Moving the database",
        120,
    )
    writer.drain()
    wait_for(lambda: [r.draining for r in readers], all, timeout=2, what="the drain notice")
    assert readers[1].active, "draining kept the maintenance fields"
    writer.disable()
    wait_for(lambda: [r.active for r in readers], lambda seen: not any(seen), timeout=2)
    assert all(r.draining for r in readers), "disabling kept the drain"
    stored = json.loads(redis_server.cli("GET", "shop"))
    assert (stored["active"], stored["draining"], stored["version"]) == (False, True, 1)


def test_without_a_notice_polling_catches_up_within_the_interval(
    redis_server: RedisServer,
) -> None:
    uri = redis_server.uri()
    reader = MaintenanceSwitch(uri, env_var=None, poll_interval=0.2)
    # Written behind tidegate's back: no notice is published.
    redis_server.cli("SET", "tidegate:maintenance", '{"active": true, "message": "by hand"}')
    started = time.monotonic()
    wait_for(lambda: reader.active, bool, timeout=2, interval=0.005, what="the poll")
    assert time.monotonic() - started < 0.2 + 0.5
    assert reader.status().message == "by hand"


def test_the_middleware_answers_from_the_store(redis_server: RedisServer) -> None:
    uri = redis_server.uri(key="site")
    app = TideGateMiddleware(ok_app, maintenance=uri, limit=4)
    assert drive(app, environ_for("/"))[0] == "200 OK"
    MaintenanceSwitch(uri, env_var=None).enable(message="Back soon", retry_after=90)
    _status, headers, body = wait_for(
        lambda: drive(app, environ_for("/", HTTP_ACCEPT="application/json")),
        lambda reply: reply[0].startswith("503"),
        timeout=2,
    )
    assert ("Retry-After", "90") in headers
    assert json.loads(body)["message"] == "Back soon"


def test_what_one_process_writes_another_reads(redis_server: RedisServer) -> None:
    uri = redis_server.uri(key="fleet")
    reader = MaintenanceSwitch(uri, env_var=None, poll_interval=30)
    script = (
        "import sys; from tidegate import MaintenanceSwitch;"
        "MaintenanceSwitch(sys.argv[1], env_var=None).enable(message='from afar')"
    )
    subprocess.run([sys.executable, "-c", script, uri], check=True, timeout=30)
    wait_for(lambda: reader.active, bool, timeout=2)
    assert reader.status().message == "from afar"


def test_a_unix_socket_store_works(redis_server: RedisServer) -> None:
    uri = redis_server.unix_uri(key="sock")
    a = MaintenanceSwitch(uri, env_var=None, poll_interval=30)
    b = MaintenanceSwitch(uri, env_var=None, poll_interval=30)
    a.enable()
    wait_for(lambda: b.active, bool, timeout=2)
    assert redis_server.cli("EXISTS", "sock").strip() == "1"


def test_limits_are_enforced_where_the_state_is_written(redis_server: RedisServer) -> None:
    switch = MaintenanceSwitch(redis_server.uri(), env_var=None)
    with pytest.raises(ValueError, match="message: is too long"):
        switch.enable(message="x" * 70_000)
    assert redis_server.cli("EXISTS", "tidegate:maintenance").strip() == "0"


def test_garbage_in_the_key_keeps_the_last_good_state(
    redis_server: RedisServer, warnings_caught: pytest.LogCaptureFixture
) -> None:
    uri = redis_server.uri()
    switch = MaintenanceSwitch(uri, env_var=None, poll_interval=0.05)
    switch.enable(message="first")
    for garbage in ("not json", '{"active": "yes"}', "[1, 2]"):
        redis_server.cli("SET", "tidegate:maintenance", garbage)
        time.sleep(0.2)
        assert switch.active and switch.status().message == "first"
    redis_server.cli("LPUSH", "a list", "item")
    redis_server.cli("RENAME", "a list", "tidegate:maintenance")  # WRONGTYPE for GET
    time.sleep(0.2)
    assert switch.active
    messages = store_warnings(warnings_caught, redis_server.port)
    assert any("the key tidegate:maintenance" in m for m in messages), messages
    assert any("is lost" in m and "WRONGTYPE" in m for m in messages), messages
    # One warning per bad episode, not one per poll.
    assert len(messages) <= 3, messages
    redis_server.cli("DEL", "tidegate:maintenance")
    wait_for(lambda: switch.active, lambda on: not on, timeout=2)
    assert any("is back" in m for m in store_warnings(warnings_caught, redis_server.port))


@pytest.fixture
def paused_redis() -> Iterator[RedisServer]:
    need_redis()
    with RedisServer() as server:
        try:
            yield server
        finally:
            server.resume()


def test_a_paused_store_never_slows_a_request(
    paused_redis: RedisServer, warnings_caught: pytest.LogCaptureFixture
) -> None:
    uri = paused_redis.uri()
    app = TideGateMiddleware(ok_app, maintenance=uri, limit=4)
    MaintenanceSwitch(uri, env_var=None).enable()
    switch = app.maintenance
    assert switch is not None
    wait_for(lambda: switch.active, bool, timeout=2)
    threads_before = threading.active_count()
    paused_redis.pause()
    slowest = 0.0
    deadline = time.monotonic() + 3.5  # several store timeouts and poll intervals
    answered = 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status, _, _ = drive(app, environ_for("/"))
        slowest = max(slowest, time.perf_counter() - started)
        assert status.startswith("503"), "the last known state (maintenance) stands"
        answered += 1
        time.sleep(0.001)
    assert answered > 500
    assert slowest < 0.05, f"a request took {slowest * 1000:.1f} ms while the store was paused"
    assert threading.active_count() == threads_before, "no thread pile-up"
    assert sum("is lost" in m for m in store_warnings(warnings_caught, paused_redis.port)) == 1
    paused_redis.resume()
    wait_for(
        lambda: store_warnings(warnings_caught, paused_redis.port),
        lambda messages: any("is back" in m for m in messages),
        timeout=5,
    )


def test_a_stopped_store_keeps_the_last_state_until_it_is_back(
    redis_server: RedisServer, warnings_caught: pytest.LogCaptureFixture
) -> None:
    uri = redis_server.uri()
    switch = MaintenanceSwitch(uri, env_var=None, poll_interval=0.05)
    switch.enable(message="kept")
    redis_server.stop()
    time.sleep(0.5)
    assert switch.active and switch.status().message == "kept"
    with pytest.raises(ConnectionError, match="cannot write maintenance store redis://"):
        switch.disable()
    assert switch.active, "a failed write changes nothing"
    lost = [m for m in store_warnings(warnings_caught, redis_server.port) if "is lost" in m]
    assert len(lost) == 1, lost
    assert "keeping the last known state" in lost[0]
    redis_server.start()  # the same port, empty: nothing stored means off
    wait_for(lambda: switch.active, lambda on: not on, timeout=3)
    back = [m for m in store_warnings(warnings_caught, redis_server.port) if "is back" in m]
    assert len(back) == 1, back


def test_a_wrong_password_is_a_lost_store_and_a_clear_write_error(
    warnings_caught: pytest.LogCaptureFixture,
) -> None:
    need_redis()
    with RedisServer(password="right horse") as server:
        good = MaintenanceSwitch(server.uri(), env_var=None)
        good.enable()
        wrong = MaintenanceSwitch(server.uri(password="wrong"), env_var=None)
        assert not wrong.active
        assert any("WRONGPASS" in m for m in store_warnings(warnings_caught, server.port))
        with pytest.raises(ConnectionError, match="WRONGPASS") as excinfo:
            wrong.enable()
        assert "wrong" not in str(excinfo.value).replace("WRONGPASS", "")
        assert "***" in str(excinfo.value)


def test_a_server_that_is_not_redis_is_survived(
    warnings_caught: pytest.LogCaptureFixture,
) -> None:
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"\xff" * 1000)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        switch = MaintenanceSwitch(f"redis://{HOST}:{port}", env_var=None, poll_interval=0.05)
        time.sleep(0.3)
        assert not switch.active
        messages = store_warnings(warnings_caught, port)
        assert sum("is lost" in m for m in messages) == 1, messages
        assert "not Redis's protocol" in messages[0]
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_every_follower_leaves_a_heartbeat_and_the_cli_lists_them(
    redis_server: RedisServer,
) -> None:
    uri = redis_server.uri(key="app")
    followers = [MaintenanceSwitch(uri, env_var=None, poll_interval=0.1) for _ in range(2)]
    cli = [sys.executable, "-m", "tidegate"]
    on = subprocess.run(
        [*cli, "maintenance", "on", "--state", uri, "--message", "Upgrade", "--for", "10m"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert on.returncode == 0, on.stderr
    wait_for(lambda: [f.active for f in followers], all, timeout=2)
    time.sleep(0.3)  # a poll after the change records what the followers see
    done = subprocess.run(
        [*cli, "maintenance", "status", "--json", "--state", uri],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert (document["store"], document["active"], document["message"]) == (
        f"redis://{HOST}:{redis_server.port}/0?key=app",
        True,
        "Upgrade",
    )
    # Both switches of this process write the one heartbeat of this pid; the CLI writes none.
    assert [(p["pid"], p["active"]) for p in document["processes"]] == [(os.getpid(), True)]
    assert 0 <= time.time() - document["processes"][0]["polled_at"] < 2
    text = subprocess.run(
        [*cli, "maintenance", "status", "--state", uri], capture_output=True, text=True, timeout=30
    ).stdout
    assert "1 following, 1 of them see maintenance ON" in text
    assert str(os.getpid()) in text


def test_the_cli_fails_in_one_line_when_the_store_is_down(redis_server: RedisServer) -> None:
    uri = redis_server.uri()
    redis_server.stop()
    for command in (["maintenance", "on"], ["maintenance", "status"], ["drain"]):
        done = subprocess.run(
            [sys.executable, "-m", "tidegate", *command, "--state", uri],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tidegate: error: "), done.stderr
        assert "Connection refused" in lines[0]


def test_a_tls_store_is_checked_against_its_ca(warnings_caught: pytest.LogCaptureFixture) -> None:
    need_redis()
    with RedisServer(tls=True) as server:
        over_tls = MaintenanceSwitch(server.tls_uri(key="secure"), env_var=None, poll_interval=30)
        plain = MaintenanceSwitch(server.uri(key="secure"), env_var=None, poll_interval=30)
        over_tls.enable(message="over TLS")
        wait_for(lambda: plain.active, bool, timeout=2)
        plain.drain()
        wait_for(lambda: over_tls.draining, bool, timeout=2, what="a notice over TLS")
        assert over_tls.status().message == "over TLS"
        assert (
            over_tls.store == f"rediss://{HOST}:{server.tls_port}/0?key=secure&ca={server.ca_path}"
        )

        # Without ca=, the server's certificate is checked against the public roots: refused.
        untrusted = MaintenanceSwitch(server.tls_uri(ca=False), env_var=None)
        assert not untrusted.active
        with pytest.raises(ConnectionError, match="certificate"):
            untrusted.enable()
        lost = [m for m in store_warnings(warnings_caught, server.tls_port) if "is lost" in m]
        assert len(lost) == 1 and "certificate" in lost[0], lost
