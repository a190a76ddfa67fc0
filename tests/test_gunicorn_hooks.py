"""The Gunicorn hooks in ``tidegate.gunicorn``: each called with fake arbiter and worker objects
and checked with Gunicorn's own validation, then a real Gunicorn that drains on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from gunicorn.app.base import Application
from gunicorn.config import Config
from servers import GunicornServer, ServerError, wait_for

import tidegate.gunicorn as hooks
from tidegate import metrics, process_draining, undrain_process


@dataclass
class FakeLog:
    lines: list[tuple[str, str]] = field(default_factory=list)

    def info(self, msg: str, *args: object) -> None:
        self.lines.append(("info", msg % args))

    def warning(self, msg: str, *args: object) -> None:
        self.lines.append(("warning", msg % args))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


@dataclass
class FakeConfig:
    graceful_timeout: float = 30
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeServer:
    cfg: FakeConfig = field(default_factory=FakeConfig)
    log: FakeLog = field(default_factory=FakeLog)


@dataclass
class FakeWorker:
    """Records the calls Gunicorn's own SIGTERM handler would get, and from which thread."""

    cfg: FakeConfig = field(default_factory=FakeConfig)
    log: FakeLog = field(default_factory=FakeLog)
    pid: int = 4242
    exits: list[tuple[int, str]] = field(default_factory=list)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.exits.append((sig, threading.current_thread().name))


@pytest.fixture(autouse=True)
def sigterm_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets the test process's SIGTERM handler back, and the process undrained."""
    monkeypatch.delenv(hooks.DRAIN_SECONDS_ENV, raising=False)
    monkeypatch.delenv(metrics.METRICS_FILE_ENV, raising=False)
    monkeypatch.delenv(metrics.METRICS_DIR_ENV, raising=False)
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        hooks.on_exit(FakeServer())
        current = signal.getsignal(signal.SIGTERM)
        if isinstance(current, hooks._Drain):
            current.cancel()
        signal.signal(signal.SIGTERM, before)
        undrain_process()


def installed(worker: FakeWorker) -> Callable[[int, FrameType | None], Any]:
    """Installs the drain as Gunicorn would (after its own SIGTERM handler), returns it."""
    signal.signal(signal.SIGTERM, worker.handle_exit)
    hooks.post_worker_init(worker)
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    return handler


def sigterm() -> None:
    """A real SIGTERM to this (the main) thread; its handler runs before this returns."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
    time.sleep(0)


# -- Gunicorn accepts the hooks -------------------------------------------------------------

HOOKS = ("on_starting", "post_fork", "post_worker_init", "worker_exit", "child_exit", "on_exit")


def test_gunicorn_validates_every_hook() -> None:
    cfg = Config()
    for name in HOOKS:
        cfg.set(name, getattr(hooks, name))
        assert cfg.settings[name].get() is getattr(hooks, name)


def test_the_module_is_a_gunicorn_config_that_sets_only_its_hooks() -> None:
    loader = Application.__new__(Application)
    loader.cfg = Config()
    loader.load_config_from_module_name_or_filename("python:tidegate.gunicorn")
    defaults = Config()
    changed = {
        name
        for name, setting in loader.cfg.settings.items()
        if setting.get() != defaults.settings[name].get()
    }
    assert changed == set(HOOKS)


def test_the_module_imports_without_gunicorn() -> None:
    code = (
        "import sys; sys.modules['gunicorn'] = None\n"
        "import tidegate.gunicorn as g\n"
        "print(g.drain_seconds(30))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5.0"


# -- the drain period -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "graceful", "expected"),
    [
        (None, 30, 5.0),
        ("", 30, 5.0),
        (" 2.5 ", 30, 2.5),
        ("0", 30, 0.0),
        ("10", 3, 2.0),
        ("10", 1, 0.0),
        (None, 0.5, 0.0),
    ],
)
def test_drain_seconds(value: str | None, graceful: float, expected: float) -> None:
    environ = {} if value is None else {hooks.DRAIN_SECONDS_ENV: value}
    assert hooks.drain_seconds(graceful, environ) == expected


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", "1e400", "5s"])
def test_a_bad_drain_period_fails_at_start_up_naming_the_variable(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = f"TIDEGATE_DRAIN_SECONDS: must be a number of seconds >= 0, got '{value}'"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        hooks.drain_seconds(30, {hooks.DRAIN_SECONDS_ENV: value})

    server = FakeServer(cfg=FakeConfig(env={hooks.DRAIN_SECONDS_ENV: value}))
    with pytest.raises(RuntimeError, match=r"^TIDEGATE_DRAIN_SECONDS: "):
        hooks.on_starting(server)

    monkeypatch.setenv(hooks.DRAIN_SECONDS_ENV, value)
    worker = FakeWorker()
    signal.signal(signal.SIGTERM, worker.handle_exit)
    with pytest.raises(ValueError, match=r"^TIDEGATE_DRAIN_SECONDS: "):
        hooks.post_worker_init(worker)
    assert signal.getsignal(signal.SIGTERM) == worker.handle_exit, "nothing was installed"


def test_on_starting_logs_the_period_from_gunicorns_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hooks.DRAIN_SECONDS_ENV, "9")
    server = FakeServer(cfg=FakeConfig(graceful_timeout=20, env={hooks.DRAIN_SECONDS_ENV: "3"}))
    hooks.on_starting(server)
    assert server.log.lines == [("info", "tidegate: workers drain for 3s on SIGTERM")]


def test_a_period_too_long_for_graceful_timeout_is_capped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(hooks.DRAIN_SECONDS_ENV, "60")
    worker = FakeWorker(cfg=FakeConfig(graceful_timeout=3))
    handler = installed(worker)
    assert isinstance(handler, hooks._Drain)
    assert handler.seconds == 2.0
    assert worker.log.lines == [
        (
            "warning",
            "tidegate: drain of 60s (TIDEGATE_DRAIN_SECONDS) capped to 2s, "
            "1s below graceful_timeout",
        )
    ]


# -- SIGTERM ----------------------------------------------------------------------------------


def test_sigterm_drains_first_then_hands_over_on_the_main_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(hooks.DRAIN_SECONDS_ENV, "0.3")
    worker = FakeWorker()
    installed(worker)
    assert not process_draining()
    started = time.monotonic()
    sigterm()
    assert process_draining()
    assert worker.exits == [], "Gunicorn's handler ran before the drain period"
    assert "worker 4242 draining" in worker.log.text()
    assert "shutting down in 0.3s" in worker.log.text()

    wait_for(lambda: list(worker.exits), bool, timeout=5, what="the hand-over")
    waited = time.monotonic() - started
    assert worker.exits == [(signal.SIGTERM, "MainThread")]
    assert 0.3 <= waited < 2.0
    assert process_draining(), "the drain lasts until the process exits"


def test_repeated_sigterms_neither_cut_the_drain_short_nor_hand_over_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(hooks.DRAIN_SECONDS_ENV, "0.4")
    worker = FakeWorker()
    installed(worker)
    started = time.monotonic()
    for _ in range(5):  # Gunicorn's master repeats SIGTERM to old workers during a reload
        sigterm()
        time.sleep(0.02)
    assert worker.exits == []
    wait_for(lambda: list(worker.exits), bool, timeout=5, what="the hand-over")
    assert time.monotonic() - started >= 0.4
    time.sleep(0.1)
    assert len(worker.exits) == 1
    # After the hand-over a SIGTERM goes straight to Gunicorn's handler.
    sigterm()
    assert len(worker.exits) == 2
    assert sum("draining" in line for _, line in worker.log.lines) == 1


def test_a_zero_period_drains_and_hands_over_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hooks.DRAIN_SECONDS_ENV, "0")
    worker = FakeWorker()
    installed(worker)
    sigterm()
    assert process_draining()
    assert worker.exits == [(signal.SIGTERM, "MainThread")]
    assert "shutting down now" in worker.log.text()


def test_without_a_python_handler_it_hands_over_to_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(hooks.DRAIN_SECONDS_ENV, "0")
    worker = FakeWorker()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    hooks.post_worker_init(worker)
    sigterm()
    assert worker.exits == [(signal.SIGTERM, "MainThread")]


def test_installing_twice_keeps_one_drain() -> None:
    worker = FakeWorker()
    first = installed(worker)
    hooks.post_worker_init(worker)
    assert signal.getsignal(signal.SIGTERM) is first


def test_worker_exit_logs_how_long_the_worker_drained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hooks.DRAIN_SECONDS_ENV, "0.2")
    worker, server = FakeWorker(), FakeServer()
    installed(worker)
    hooks.worker_exit(server, worker)
    assert server.log.lines == [], "no drain, nothing to say"
    sigterm()
    wait_for(lambda: list(worker.exits), bool, timeout=5, what="the hand-over")
    hooks.worker_exit(server, worker)
    assert server.log.lines == [("info", "tidegate: worker 4242 exited after draining for 0.2s")]


def test_worker_exit_before_the_period_ends_stops_the_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(hooks.DRAIN_SECONDS_ENV, "0.3")
    worker, server = FakeWorker(), FakeServer()
    installed(worker)
    sigterm()
    hooks.worker_exit(server, worker)
    time.sleep(0.5)
    assert worker.exits == []
    assert "exited after draining for 0.0s" in server.log.text()


# -- a real Gunicorn ----------------------------------------------------------------------------

DRAIN = 2.0


@pytest.mark.server
def test_gunicorn_drains_on_sigterm_then_shuts_down_gracefully() -> None:
    """SIGTERM to the master, as on a deploy: within the drain period readiness is 503
    "draining" while requests (new and in flight) still get 200; then the worker exits."""
    server = GunicornServer(
        "gunicorn_apps:ready_application",
        worker_class="gthread",
        threads=4,
        config="python:tidegate.gunicorn",
        env={hooks.DRAIN_SECONDS_ENV: str(DRAIN)},
        graceful_timeout=4,
    )
    with server, ThreadPoolExecutor(1) as pool:
        [worker] = server.worker_pids()
        assert server.fetch("/health").status == 200
        # Still running when the drain ends: it must finish, not be cut off.
        in_flight = pool.submit(server.fetch, f"/work?ms={int(DRAIN * 1000) + 500}")
        wait_for(lambda: server.fetch("/_stats").json()["inside"], bool, what="in flight")

        os.kill(server.pid, signal.SIGTERM)
        sent = time.monotonic()
        health = wait_for(
            lambda: server.fetch("/health"), lambda r: r.status == 503, what="readiness 503"
        )
        assert health.json()["reason"] == "draining"
        # The app's default maintenance switch says when to come back.
        assert health.headers["Retry-After"] == "60"
        served = server.fetch("/work?ms=10")
        assert (served.status, served.body) == (200, b"done")
        assert server.fetch("/health").json()["reason"] == "draining"
        assert time.monotonic() - sent < DRAIN, "the checks above took the whole drain"

        assert in_flight.result(timeout=10).status == 200
        wait_for(server.worker_pids, lambda pids: not pids, timeout=8, what="the worker to exit")
        assert time.monotonic() - sent >= DRAIN
        wait_for(lambda: _master_gone(server), bool, timeout=8, what="the master to exit")
    output = server.output()
    assert f"tidegate: worker {worker} draining" in output
    assert f"tidegate: worker {worker} exited after draining for {DRAIN:.1f}s" in output
    assert "Traceback" not in output


def _master_gone(server: GunicornServer) -> bool:
    try:
        return os.waitid(os.P_PID, server.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


@pytest.mark.server
def test_a_sync_worker_drains_alone_and_its_replacement_is_ready() -> None:
    """SIGTERM to one sync worker: it drains and exits after the period (not at its next
    15-second wake-up), and the worker the master starts in its place answers 200."""
    with GunicornServer(
        "gunicorn_apps:ready_application",
        worker_class="sync",
        config="python:tidegate.gunicorn",
        env={hooks.DRAIN_SECONDS_ENV: "1"},
    ) as server:
        [worker] = server.worker_pids()
        os.kill(worker, signal.SIGTERM)
        sent = time.monotonic()
        health = wait_for(
            lambda: server.fetch("/health"), lambda r: r.status == 503, what="readiness 503"
        )
        assert health.json()["reason"] == "draining"
        assert server.fetch("/work?ms=10").status == 200
        wait_for(server.worker_pids, lambda pids: worker not in pids, timeout=5, what="exit")
        assert 1.0 <= time.monotonic() - sent < 4.0
        [replacement] = wait_for(server.worker_pids, lambda pids: len(pids) == 1, what="respawn")
        assert replacement != worker
        assert server.fetch("/health").status == 200


@pytest.mark.server
def test_gunicorn_refuses_to_start_with_a_bad_drain_period() -> None:
    server = GunicornServer(
        "gunicorn_apps:ready_application",
        config="python:tidegate.gunicorn",
        env={hooks.DRAIN_SECONDS_ENV: "soon"},
    )
    with pytest.raises(ServerError) as failure:
        server.start()
    assert "Error: TIDEGATE_DRAIN_SECONDS: must be a number of seconds >= 0, got 'soon'" in str(
        failure.value
    )
    assert server.returncode == 1


# -- metrics ---------------------------------------------------------------------------------


def test_on_starting_creates_the_metrics_file_and_on_exit_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeServer(cfg=FakeConfig(env={metrics.METRICS_DIR_ENV: str(tmp_path)}))
    hooks.on_starting(server)
    path = Path(os.environ[metrics.METRICS_FILE_ENV])
    assert path.parent == tmp_path
    assert metrics.render(path=path)[1].startswith(b"# HELP tidegate_requests_total")
    hooks.child_exit(server, FakeWorker(pid=4242))  # no slot of that worker: nothing to fold
    hooks.on_exit(server)
    assert list(tmp_path.iterdir()) == []
    assert metrics.METRICS_FILE_ENV not in os.environ

    hooks.on_starting(FakeServer())
    private = Path(os.environ[metrics.METRICS_FILE_ENV]).parent
    assert private.name.startswith("tidegate-metrics-")
    hooks.on_exit(FakeServer())
    assert not private.exists(), "the folder made for the file goes with it"


def test_an_unusable_metrics_dir_stops_gunicorn_naming_the_variable(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    server = FakeServer(cfg=FakeConfig(env={metrics.METRICS_DIR_ENV: str(not_a_folder)}))
    with pytest.raises(RuntimeError, match=r"^TIDEGATE_METRICS_DIR: cannot create metrics file"):
        hooks.on_starting(server)
    assert metrics.METRICS_FILE_ENV not in os.environ


def test_a_worker_with_an_unusable_metrics_file_warns_and_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = tmp_path / "garbage.shm"
    garbage.write_bytes(b"\0" * 10_000)
    monkeypatch.setenv(metrics.METRICS_FILE_ENV, str(garbage))
    worker = FakeWorker()
    hooks.post_fork(FakeServer(), worker)
    assert worker.log.lines[0][0] == "warning"
    assert "metrics of worker 4242 stay its own" in worker.log.text()
    assert "not a usable metrics file" in worker.log.text()
