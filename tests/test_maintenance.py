"""MaintenanceSwitch: in-process, environment and state-file maintenance, and drain."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import hammer, seconds_until

from tidegate import MaintenanceStatus, MaintenanceSwitch, RetryAfter

# How late a change may be seen beyond the poll interval on a busy machine.
SLACK = 1.0
ENV = "TIDEGATE_TEST_MAINTENANCE"


def delay(status: MaintenanceStatus) -> int:
    return int(status.retry_after.header_value())


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tidegate" and r.levelno == logging.WARNING]


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state.json"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAINTENANCE_MODE", raising=False)
    monkeypatch.delenv(ENV, raising=False)


# -- in-process ---------------------------------------------------------------------------


def test_off_by_default() -> None:
    switch = MaintenanceSwitch()
    assert not switch.active
    assert not switch.draining
    status = switch.status()
    assert (status.active, status.source, status.message, status.until) == (
        False,
        None,
        None,
        None,
    )
    assert not status.draining
    assert delay(status) == 60
    assert (switch.state_file, switch.env_var, switch.poll_interval) == (
        None,
        "MAINTENANCE_MODE",
        1.0,
    )


def test_enable_and_disable_in_process() -> None:
    switch = MaintenanceSwitch(env_var=None, default_retry_after=45)
    until = datetime.now(timezone.utc) + timedelta(minutes=5)
    switch.enable(message="Upgrading the database", until=until, retry_after=10)
    assert switch.active
    status = switch.status()
    assert isinstance(status, MaintenanceStatus)
    assert status.active
    assert status.source == "local"
    assert status.message == "Upgrading the database"
    assert status.until == until.replace(microsecond=0)
    assert status.until is not None and status.until.utcoffset() == timedelta(0)
    assert isinstance(status.retry_after, RetryAfter)
    assert 298 <= delay(status) <= 300, "Retry-After follows until while it is ahead"

    switch.disable()
    assert not switch.active
    status = switch.status()
    assert (status.active, status.source, status.message, status.until) == (
        False,
        None,
        None,
        None,
    )
    assert delay(status) == 45


def test_retry_after_never_points_into_the_past() -> None:
    switch = MaintenanceSwitch(env_var=None, default_retry_after=33)
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    switch.enable(until=past, retry_after=12)
    status = switch.status()
    assert status.until == past.replace(microsecond=0), "until is reported even when passed"
    assert delay(status) == 12
    switch.enable(until=past)
    assert delay(switch.status()) == 33
    switch.enable(retry_after=timedelta(seconds=90.2))
    assert delay(switch.status()) == 91, "a timedelta is rounded up"
    switch.enable()
    assert delay(switch.status()) == 33
    switch.enable(retry_after=10**12)
    assert delay(switch.status()) == 2147483648, "saturates like any delay-seconds"


def test_until_naive_is_utc_and_aware_is_converted() -> None:
    switch = MaintenanceSwitch(env_var=None)
    switch.enable(until=datetime(2031, 5, 6, 7, 8, 9))
    assert switch.status().until == datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    plus_two = timezone(timedelta(hours=2))
    switch.enable(until=datetime(2031, 5, 6, 9, 8, 9, tzinfo=plus_two))
    assert switch.status().until == datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def test_status_is_a_frozen_snapshot_with_a_readable_repr() -> None:
    switch = MaintenanceSwitch(env_var=None)
    switch.enable(message="Back at 'noon'", until=datetime(2031, 1, 2, 12, 0, 0))
    status = switch.status()
    switch.disable()
    assert status.active, "a snapshot does not change afterwards"
    with pytest.raises(AttributeError):
        status.active = False  # type: ignore[misc]
    text = repr(status)
    assert text.startswith("MaintenanceStatus(active=True, source='local'")
    assert "message=\"Back at 'noon'\"" in text
    assert "until='2031-01-02T12:00:00Z'" in text
    assert "draining=False" in text
    assert repr(switch).startswith("MaintenanceSwitch(store=None, env_var=None")


# -- environment ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "YES", "on", "On", " true "])
def test_env_var_truthy_spellings(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MAINTENANCE_MODE", value)
    switch = MaintenanceSwitch()
    assert switch.active
    status = switch.status()
    assert (status.source, status.message) == ("env", None)


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "2", "enabled", "y"])
def test_env_var_other_values_are_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MAINTENANCE_MODE", value)
    assert not MaintenanceSwitch().active


def test_env_change_is_seen_within_the_poll_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    switch = MaintenanceSwitch(env_var=ENV, poll_interval=0.2)
    assert not switch.active
    monkeypatch.setenv(ENV, "yes")
    assert seconds_until(lambda: switch.active, 0.2 + SLACK) <= 0.2 + SLACK
    monkeypatch.setenv(ENV, "no")
    seconds_until(lambda: not switch.active, 0.2 + SLACK)


def test_env_is_not_looked_at_before_the_interval_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    switch = MaintenanceSwitch(env_var=ENV, poll_interval=3600)
    monkeypatch.setenv(ENV, "1")
    assert not switch.active, "the per-request check must not read the environment"
    assert MaintenanceSwitch(env_var=ENV).active, "a new switch looks at once"


def test_env_var_none_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINTENANCE_MODE", "1")
    assert not MaintenanceSwitch(env_var=None, poll_interval=0).active


# -- state file -------------------------------------------------------------------------------


def test_missing_state_file_is_off(state_path: Path) -> None:
    switch = MaintenanceSwitch(state_path, poll_interval=0)
    assert not switch.active and not switch.draining
    assert not state_path.exists()
    switch.enable()
    assert switch.active
    state_path.unlink()
    seconds_until(lambda: not switch.active, SLACK)  # a file removed means off


def test_enable_writes_the_documented_format(state_path: Path) -> None:
    switch = MaintenanceSwitch(str(state_path), env_var=None)
    assert switch.state_file == str(state_path)
    switch.enable(message="Upgrading", until=datetime(2031, 1, 2, 3, 4, 5), retry_after=600)
    assert switch.active, "the writer sees its own change at once"
    doc = json.loads(state_path.read_text())
    updated_at = doc.pop("updated_at")
    assert doc == {
        "version": 1,
        "active": True,
        "message": "Upgrading",
        "until": "2031-01-02T03:04:05Z",
        "retry_after": 600,
        "draining": False,
    }
    stamped = datetime.strptime(updated_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - stamped).total_seconds()) < 5
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o644
    assert switch.status().source == "file"
    switch.disable()
    doc = json.loads(state_path.read_text())
    assert (doc["active"], doc["message"], doc["until"], doc["retry_after"]) == (
        False,
        None,
        None,
        None,
    )


def test_a_hand_written_file_is_understood(state_path: Path) -> None:
    state_path.write_text(
        '{"active": true, "message": "Moving racks", "until": "2031-06-01T14:00:00+02:00",'
        ' "owner": "ops"}'
    )
    status = MaintenanceSwitch(state_path).status()
    assert (status.active, status.source, status.message) == (True, "file", "Moving racks")
    assert status.until == datetime(2031, 6, 1, 12, 0, tzinfo=timezone.utc)


def test_a_second_switch_follows_within_the_poll_interval(state_path: Path) -> None:
    writer = MaintenanceSwitch(state_path, env_var=None)
    reader = MaintenanceSwitch(state_path, env_var=None, poll_interval=0.2)
    slow = MaintenanceSwitch(state_path, env_var=None, poll_interval=3600)
    writer.enable(message="Upgrading")
    seconds_until(lambda: reader.active, 0.2 + SLACK)
    assert reader.status().message == "Upgrading"
    assert not slow.active, "a switch looks no more often than its poll interval"

    writer.drain()
    seconds_until(lambda: reader.draining, 0.2 + SLACK)
    assert reader.active, "drain kept maintenance"
    writer.disable()
    seconds_until(lambda: not reader.active, 0.2 + SLACK)
    assert reader.draining, "disable kept the drain"
    writer.undrain()
    seconds_until(lambda: not reader.draining, 0.2 + SLACK)


CHILD = """
import sys, time
from tidegate import MaintenanceSwitch

switch = MaintenanceSwitch(sys.argv[1], env_var=None, poll_interval=float(sys.argv[2]))
print("ready", switch.active, switch.draining, flush=True)
for line in sys.stdin:
    want = line.strip()
    start = time.monotonic()
    while f"{switch.active} {switch.draining}" != want:
        if time.monotonic() - start > 30:
            print("timeout", flush=True)
            break
        time.sleep(0.002)
    else:
        print("seen", switch.status().message, flush=True)
"""


def test_another_process_follows_within_the_poll_interval(state_path: Path) -> None:
    poll = 0.2
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state_path), str(poll)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().split() == ["ready", "False", "False"]
        writer = MaintenanceSwitch(state_path, env_var=None)

        def expect(change: Callable[[], None], want: str, message: str) -> None:
            assert child.stdin is not None and child.stdout is not None
            start = time.monotonic()
            change()
            child.stdin.write(want + "\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == f"seen {message}"
            assert time.monotonic() - start <= poll + SLACK

        try:
            expect(lambda: writer.enable(message="Upgrading"), "True False", "Upgrading")
            expect(writer.drain, "True True", "Upgrading")
            expect(writer.disable, "False True", "None")
            expect(writer.undrain, "False False", "None")
        finally:
            child.stdin.close()
            try:
                child.wait(timeout=30)
            finally:
                if child.poll() is None:
                    child.kill()
    assert child.returncode == 0


def test_local_drain_does_not_touch_the_file(state_path: Path) -> None:
    switch = MaintenanceSwitch(state_path, env_var=None)
    other = MaintenanceSwitch(state_path, env_var=None, poll_interval=0)
    switch.drain(local=True)
    assert switch.draining
    assert switch.status().draining
    assert not state_path.exists()
    assert not other.draining

    switch.enable()
    assert json.loads(state_path.read_text())["draining"] is False
    seconds_until(lambda: other.active, SLACK)
    assert not other.draining
    switch.undrain(local=True)
    assert not switch.draining


def test_local_maintenance_does_not_touch_the_file_and_outranks_it(state_path: Path) -> None:
    switch = MaintenanceSwitch(state_path, env_var=None)
    other = MaintenanceSwitch(state_path, env_var=None, poll_interval=0)
    switch.enable(message="only here", retry_after=9, local=True)
    assert not state_path.exists()
    assert not other.active
    status = switch.status()
    assert (status.active, status.source, status.message) == (True, "local", "only here")
    assert delay(status) == 9

    switch.enable(message="everywhere")
    seconds_until(lambda: other.status().message == "everywhere", SLACK)
    assert switch.status().message == "only here", "this process's own maintenance wins"
    switch.disable(local=True)
    assert (switch.status().source, switch.status().message) == ("file", "everywhere")
    switch.disable()
    assert not switch.active
    seconds_until(lambda: not other.active, SLACK)


def test_drain_without_a_file_is_local() -> None:
    switch = MaintenanceSwitch(env_var=None)
    switch.drain()
    assert switch.draining and not switch.active
    switch.enable()
    assert switch.draining, "enable keeps the drain"
    switch.undrain()
    assert not switch.draining and switch.active


def test_file_drain_and_local_drain_add_up(state_path: Path) -> None:
    switch = MaintenanceSwitch(state_path, env_var=None)
    switch.drain()
    switch.drain(local=True)
    switch.undrain()
    assert switch.draining, "the local drain still holds"
    switch.undrain(local=True)
    assert not switch.draining


def test_a_failed_write_raises_and_changes_nothing(tmp_path: Path) -> None:
    switch = MaintenanceSwitch(tmp_path / "missing" / "state.json", env_var=None)
    with pytest.raises(OSError, match=r"state\.json"):
        switch.enable(message="x")
    assert not switch.active
    with pytest.raises(OSError):
        switch.drain()
    assert not switch.draining


# -- bad state files ----------------------------------------------------------------------------


def _corrupt(path: Path) -> None:
    path.write_text("this is not json")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _half_written(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _wrong_types(path: Path) -> None:
    path.write_text('{"version": 1, "active": "yes", "message": 5}')


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


BREAKERS: dict[str, Callable[[Path], None]] = {
    "corrupt": _corrupt,
    "empty": _empty,
    "half-written": _half_written,
    "wrong types": _wrong_types,
    "directory": _directory,
}


def _restore(path: Path) -> None:
    if path.is_dir():
        path.rmdir()


@pytest.mark.parametrize("breaker", list(BREAKERS.values()), ids=list(BREAKERS))
def test_a_bad_file_keeps_the_last_good_state_and_warns_once(
    state_path: Path,
    caplog: pytest.LogCaptureFixture,
    breaker: Callable[[Path], None],
) -> None:
    caplog.set_level(logging.WARNING, logger="tidegate")
    writer = MaintenanceSwitch(state_path, env_var=None)
    reader = MaintenanceSwitch(state_path, env_var=None, poll_interval=0)
    writer.enable(message="Upgrading", retry_after=120)
    writer.drain()
    seconds_until(lambda: reader.active and reader.draining, SLACK)

    breaker(state_path)
    # The poller warns from its own thread; meanwhile every read answers the last good state.
    deadline = time.monotonic() + SLACK
    while not warnings_from(caplog) and time.monotonic() < deadline:
        assert reader.active
        assert reader.draining
        status = reader.status()
        assert (status.message, delay(status)) == ("Upgrading", 120)
        time.sleep(0.002)
    time.sleep(0.1)  # ten more polls of the same bad file
    assert reader.active and reader.status().message == "Upgrading"
    records = warnings_from(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert str(state_path) in records[0].getMessage()
    assert "last good state" in records[0].getMessage()

    # Rewritten in place, still bad: the same episode, no new warning.
    if state_path.is_file():
        state_path.write_text("{")
        time.sleep(0.1)
        assert reader.active
        assert len(warnings_from(caplog)) == 1

    _restore(state_path)
    writer.disable()
    seconds_until(lambda: not reader.active, SLACK)  # a good write is picked up
    breaker(state_path)
    seconds_until(lambda: len(warnings_from(caplog)) == 2, SLACK)  # a good read re-arms the warning
    assert not reader.active


def test_a_bad_file_at_startup_counts_as_off_and_warns_once(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tidegate")
    state_path.write_text('{"active": tr')
    switch = MaintenanceSwitch(state_path, poll_interval=0)
    for _ in range(10):
        assert not switch.active
    assert len(warnings_from(caplog)) == 1


def test_a_write_over_a_bad_file_keeps_the_last_good_fields(state_path: Path) -> None:
    switch = MaintenanceSwitch(state_path, env_var=None)
    switch.drain()
    _corrupt(state_path)
    switch.enable(message="Upgrading")
    doc = json.loads(state_path.read_text())
    assert (doc["active"], doc["message"], doc["draining"]) == (True, "Upgrading", True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_keeps_the_last_good_state(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tidegate")
    writer = MaintenanceSwitch(state_path, env_var=None)
    reader = MaintenanceSwitch(state_path, env_var=None, poll_interval=0)
    writer.enable()
    seconds_until(lambda: reader.active, SLACK)
    state_path.chmod(0)
    state_path.touch()
    try:
        seconds_until(lambda: len(warnings_from(caplog)) == 1, SLACK)
        assert reader.active
    finally:
        state_path.chmod(0o644)


# -- what one writes, every reader accepts --------------------------------------------------------


def test_a_message_too_large_for_any_reader_is_refused_where_it_is_written(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tidegate.cli import main

    caplog.set_level(logging.WARNING, logger="tidegate")
    writer = MaintenanceSwitch(state_path, env_var=None)
    reader = MaintenanceSwitch(state_path, env_var=None, poll_interval=0)
    writer.enable(message="Upgrading")
    before = state_path.read_bytes()
    # Each control character is six bytes of JSON: 11,000 of them overflow 64 KiB.
    for local in (False, True):
        with pytest.raises(ValueError, match=r"^message: is too long: .* 65536 every reader"):
            writer.enable(message="\x01" * 11_000, local=local)
    assert main(["maintenance", "on", "--state", str(state_path), "--message", "x" * 70_000]) == 2
    assert state_path.read_bytes() == before
    assert [p.name for p in state_path.parent.iterdir()] == [state_path.name]
    # The largest message that fits is written, and every other process takes it.
    fits = "x" * 65_000
    writer.enable(message=fits)
    seconds_until(lambda: reader.status().message == fits, SLACK)
    assert MaintenanceSwitch(state_path, env_var=None).status().message == fits
    assert warnings_from(caplog) == []


# -- no request waits on the file ------------------------------------------------------------------

FIFO_CHILD = """
import os, sys, threading, time
from tidegate import MaintenanceSwitch
from tidegate.wsgi import TideGateMiddleware

path = sys.argv[1]
os.mkfifo(path)
switch = MaintenanceSwitch(path, env_var=None, poll_interval=0)   # built over a FIFO
app = TideGateMiddleware(lambda e, s: s("200 OK", []) or [b"ok"], limit=8, maintenance=switch)
stop = threading.Event()
served = [0] * 4

def client(i):
    while not stop.is_set():
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
        body = app(env, lambda status, headers, exc_info=None: None)
        b"".join(body)
        body.close()
        served[i] += 1

threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
regular = path + ".regular"
fifo = path + ".fifo"
deadline = time.monotonic() + 3
swaps = 0
while time.monotonic() < deadline:
    # A regular file and a FIFO take turns at the path, under the poller's feet.
    with open(regular, "w") as f:
        f.write('{"active": false}')
    os.replace(regular, path)
    os.mkfifo(fifo)
    os.replace(fifo, path)
    swaps += 1
stop.set()
for t in threads:
    t.join(timeout=10)
print(swaps, min(served), switch.active, flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_at_the_state_path_stalls_no_request_and_no_thread(tmp_path: Path) -> None:
    # In a child process: a blocking open with the GIL held would freeze the whole
    # interpreter, and then only the timeout here could tell.
    done = subprocess.run(
        [sys.executable, "-c", FIFO_CHILD, str(tmp_path / "state.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    swaps, least_served, active = done.stdout.split()
    assert int(swaps) > 10, done.stdout
    assert int(least_served) > 1000, "a client thread was stalled"
    assert active == "False"


FORK_CHILD = """
import os, sys, time
from tidegate import MaintenanceSwitch

path = sys.argv[1]
switch = MaintenanceSwitch(path, env_var=None, poll_interval=0.05)  # as a preloading master
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(write)
    os.read(read, 1)  # the parent has written the file
    deadline = time.monotonic() + 10
    while not switch.active and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(0 if switch.active and switch.status().message == "after the fork" else 1)
os.close(read)
MaintenanceSwitch(path, env_var=None).enable(message="after the fork")
os.write(write, b"x")
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_process_forked_after_the_switch_was_built_still_follows_the_file(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORK_CHILD, str(tmp_path / "state.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", "the forked child never saw the change"


KILLED_WRITER = """
import sys
from tidegate import MaintenanceSwitch

switch = MaintenanceSwitch(sys.argv[1], env_var=None)
print("writing", flush=True)
while True:
    switch.enable(message="x" * 4000)
    switch.disable()
"""


def test_writers_killed_mid_write_leave_no_temporary_files_for_ever(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    leftovers: list[Path] = []
    for _ in range(40):
        with subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(state)], stdout=subprocess.PIPE, text=True
        ) as writer:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "writing\n"
            time.sleep(0.02)
            writer.kill()
        leftovers = [p for p in tmp_path.iterdir() if p.name != state.name]
        if len(leftovers) >= 3:
            break
    # Some kills land between creating a temporary file and renaming it.
    assert leftovers, "no writer was killed mid-write; the test proved nothing"
    assert all(p.name.startswith(".state.json.") and p.name.endswith(".tmp") for p in leftovers)
    # A leftover younger than a minute may be a writer at work: it stays.
    MaintenanceSwitch(state, env_var=None).enable(message="now")
    assert {p for p in tmp_path.iterdir() if p != state} == set(leftovers)
    long_ago = time.time() - 120
    for path in leftovers:
        os.utime(path, (long_ago, long_ago))
    MaintenanceSwitch(state, env_var=None).disable()
    assert [p.name for p in tmp_path.iterdir()] == [state.name]
    assert not MaintenanceSwitch(state, env_var=None).active


# -- concurrency ---------------------------------------------------------------------------------


def test_writes_are_atomic_to_readers_in_a_tight_loop(
    state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tidegate")
    writer = MaintenanceSwitch(state_path, env_var=None)
    writer.disable()
    reader = MaintenanceSwitch(state_path, env_var=None, poll_interval=0)
    on = {"active": True, "message": "Deploying", "until": None, "retry_after": 30}
    off = {"active": False, "message": None, "until": None, "retry_after": None}
    keys = list(on)

    def read_file(i: int) -> None:
        with open(state_path, "rb") as f:
            doc: dict[str, Any] = json.load(f)
        assert doc["version"] == 1 and doc["draining"] is False
        assert {k: doc[k] for k in keys} in (on, off)

    def read_switch(i: int) -> None:
        status = reader.status()
        seen = (status.active, status.source, status.message, delay(status))
        assert seen in ((True, "file", "Deploying", 30), (False, None, None, 60))
        assert reader.active in (True, False)

    def read(i: int, turn: int) -> None:
        (read_file if i % 2 else read_switch)(i)

    def toggle() -> None:
        for n in range(500):
            if n % 2 == 0:
                writer.enable(message="Deploying", retry_after=30)
            else:
                writer.disable()

    # 32 busy readers would otherwise keep the writer waiting for the GIL after every write.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        # The readers read until the 500 writes are done.
        reads = hammer(read, threads=32, seconds=60, during=toggle).calls
    finally:
        sys.setswitchinterval(switch_interval)
    assert all(n > 0 for n in reads), reads
    assert warnings_from(caplog) == [], "no reader ever saw a partial file"
    assert os.listdir(state_path.parent) == ["state.json"], "no temporary files left behind"
    assert not reader.active


# -- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "error", "says"),
    [
        ("state_file", 123, TypeError, "must be a str, an os.PathLike or None (a state file"),
        ("store", 123, TypeError, "or a redis:// or unix:// store URI), got int"),
        ("store", "redis://h:0", ValueError, "must have a port from 1 to 65535"),
        ("store", "rediss://h?ca=/nonexistent.pem", ValueError, "ca= file /nonexistent.pem"),
        ("store", "redis://h?bogus=1", ValueError, "unknown query parameter"),
        ("state_file", "", ValueError, "must not be empty"),
        ("state_file", "folder/", ValueError, "must name a file, got 'folder/'"),
        ("env_var", 5, TypeError, "must be a str or None, got int"),
        ("env_var", "", ValueError, "must be a non-empty name without '=' or NUL, got ''"),
        ("env_var", "A=B", ValueError, "must be a non-empty name without '=' or NUL, got 'A=B'"),
        ("poll_interval", -1, ValueError, "must be a finite number of seconds >= 0, got -1"),
        ("poll_interval", float("nan"), ValueError, "finite number of seconds >= 0, got NaN"),
        ("poll_interval", float("inf"), ValueError, "finite number of seconds >= 0, got inf"),
        ("poll_interval", "1", TypeError, "must be a number of seconds, got str"),
        ("poll_interval", None, TypeError, "must be a number of seconds, got NoneType"),
        ("poll_interval", True, TypeError, "must be a number of seconds, got bool"),
        ("default_retry_after", -1, ValueError, "between 0 and 2147483648, got -1"),
        ("default_retry_after", 2**40, ValueError, f"between 0 and 2147483648, got {2**40}"),
        ("default_retry_after", 1.5, TypeError, "must be an int, got float"),
        ("default_retry_after", True, TypeError, "must be an int, got True"),
        ("default_retry_after", None, TypeError, "must be an int, got NoneType"),
    ],
)
def test_bad_constructor_arguments_name_the_parameter(
    param: str, value: Any, error: type[Exception], says: str
) -> None:
    with pytest.raises(error) as excinfo:
        MaintenanceSwitch(**{param: value})
    assert str(excinfo.value).startswith(f"{param}: ")
    assert says in str(excinfo.value)


@pytest.mark.parametrize(
    ("param", "value", "error", "says"),
    [
        ("message", 5, TypeError, "must be a str or None, got int"),
        ("until", "2030-01-01", TypeError, "must be a datetime or None, got str"),
        ("until", date(2030, 1, 1), TypeError, "must be a datetime or None, got date"),
        ("until", 1700000000, TypeError, "must be a datetime or None, got int"),
        ("retry_after", -1, ValueError, "must be whole seconds >= 0, got -1"),
        (
            "retry_after",
            timedelta(seconds=-1),
            ValueError,
            "must not be negative, got datetime.timedelta(days=-1, seconds=86399)",
        ),
        ("retry_after", 1.5, TypeError, "must be an int, a timedelta or None, got float"),
        ("retry_after", "60", TypeError, "must be an int, a timedelta or None, got str"),
        ("retry_after", True, TypeError, "must be an int, a timedelta or None, got bool"),
    ],
)
def test_bad_enable_arguments_name_the_parameter(
    state_path: Path, param: str, value: Any, error: type[Exception], says: str
) -> None:
    switch = MaintenanceSwitch(state_path, env_var=None)
    with pytest.raises(error) as excinfo:
        switch.enable(**{param: value})
    assert str(excinfo.value).startswith(f"{param}: ")
    assert says in str(excinfo.value)
    assert not switch.active and not state_path.exists(), "a refused call changes nothing"


def test_until_out_of_range_names_the_parameter() -> None:
    switch = MaintenanceSwitch(env_var=None)
    far_east = timezone(timedelta(hours=14))
    with pytest.raises(ValueError, match=r"^until: is outside the years 1 to 9999"):
        switch.enable(until=datetime(1, 1, 1, 0, 0, tzinfo=far_east))


def test_local_must_be_a_bool() -> None:
    switch = MaintenanceSwitch(env_var=None)
    with pytest.raises(TypeError, match="local"):
        switch.drain(local=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="local"):
        switch.enable(local="yes")  # type: ignore[arg-type]
    assert not switch.draining and not switch.active
