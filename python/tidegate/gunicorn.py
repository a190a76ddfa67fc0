"""Gunicorn server hooks: drain each worker on SIGTERM before it stops.

Use the module whole as a Gunicorn config::

    gunicorn -c python:tidegate.gunicorn myapp:app

or import the hooks into your own ``gunicorn.conf.py`` (call them from your own hooks of the
same name if you have some)::

    from tidegate.gunicorn import (
        child_exit, on_exit, on_starting, post_fork, post_worker_init, worker_exit,
    )

On SIGTERM (what Gunicorn's master sends every worker on shutdown, and what an orchestrator
sends on deploy) a worker first calls :func:`tidegate.drain_process`: readiness
(``HealthChecks`` at ``/health``) answers 503 with reason ``"draining"`` while every request,
new or in flight, is still served. The load balancer takes the worker out of rotation; after
the drain period Gunicorn's own graceful shutdown proceeds (stop accepting, finish in-flight
work within ``graceful_timeout``).

The drain period is ``TIDEGATE_DRAIN_SECONDS`` (default 5; ``0`` hands over at once), read
from the environment or Gunicorn's ``--env``. It is capped at ``graceful_timeout`` minus one
second, because the master kills workers ``graceful_timeout`` seconds after its SIGTERM and
in-flight work needs time to finish after the drain. A bad value stops Gunicorn at start-up
with the variable named, never in the middle of a shutdown.

Metrics: ``on_starting`` creates the server's shared metrics file (in ``TIDEGATE_METRICS_DIR``,
else in a private folder of its own under ``/dev/shm`` or the temporary folder) and hands its
path to the workers in ``TIDEGATE_METRICS_FILE``; ``post_fork`` gives each worker a slot of it,
so a scrape of any worker reports the whole server; ``child_exit`` folds an exited worker's
counters into the file's totals; ``on_exit`` removes the file. A directory that cannot hold
the file stops Gunicorn at start-up with the variable named; a worker that cannot use the file
logs a warning and reports only itself.

The module sets hooks only, no other Gunicorn setting (worker class, threads and timeouts stay
yours); it never imports Gunicorn, so tidegate works without it. Tested with the ``sync`` and
``gthread`` workers. A worker drains on every SIGTERM, which includes the old workers of a
``HUP`` reload: while they drain, probes that reach them get 503 and probes that reach new
workers get 200.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal as _signal
import tempfile
import threading as _threading
import time as _time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, Protocol

from tidegate import metrics as _metrics
from tidegate._tidegate import drain_process as _drain_process
from tidegate._tidegate import metrics_attached as _metrics_attached

__all__ = [
    "DEFAULT_DRAIN_SECONDS",
    "DRAIN_SECONDS_ENV",
    "child_exit",
    "drain_seconds",
    "on_exit",
    "on_starting",
    "post_fork",
    "post_worker_init",
    "worker_exit",
]

#: The environment variable that sets the drain period, in seconds.
DRAIN_SECONDS_ENV = "TIDEGATE_DRAIN_SECONDS"
#: The drain period when ``TIDEGATE_DRAIN_SECONDS`` is not set.
DEFAULT_DRAIN_SECONDS = 5.0
#: Time left to in-flight work between the end of the drain and Gunicorn's kill.
_SHUTDOWN_MARGIN = 1.0

_Handler = Callable[[int, FrameType | None], Any]


class _Log(Protocol):
    def info(self, msg: str, *args: object) -> None: ...
    def warning(self, msg: str, *args: object) -> None: ...


class _Config(Protocol):
    @property
    def graceful_timeout(self) -> float: ...
    @property
    def workers(self) -> int: ...
    @property
    def env(self) -> Mapping[str, str]: ...


class Server(Protocol):
    """What the hooks use of Gunicorn's arbiter."""

    @property
    def cfg(self) -> _Config: ...
    @property
    def log(self) -> _Log: ...


class Worker(Protocol):
    """What the hooks use of a Gunicorn worker."""

    @property
    def pid(self) -> int: ...
    @property
    def cfg(self) -> _Config: ...
    @property
    def log(self) -> _Log: ...
    def handle_exit(self, sig: int, frame: FrameType | None) -> None: ...


def drain_seconds(graceful_timeout: float, environ: Mapping[str, str] | None = None) -> float:
    """The drain period: ``TIDEGATE_DRAIN_SECONDS`` from ``environ`` (default ``os.environ``),
    or 5, at most ``graceful_timeout - 1`` and never negative.

    A value that is not a finite number of seconds >= 0 is a ``ValueError`` naming the variable.
    """
    return _capped(_wanted(environ), graceful_timeout)


def _wanted(environ: Mapping[str, str] | None) -> float:
    text = (os.environ if environ is None else environ).get(DRAIN_SECONDS_ENV)
    if text is None or not text.strip():
        return DEFAULT_DRAIN_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{DRAIN_SECONDS_ENV}: must be a number of seconds >= 0, got {text!r}")
    return seconds


def _capped(seconds: float, graceful_timeout: float) -> float:
    return max(0.0, min(seconds, float(graceful_timeout) - _SHUTDOWN_MARGIN))


class _Drain:
    """A worker's SIGTERM handler: drain first, hand over to Gunicorn's handler later.

    Signal handlers run in the main thread, which in a Gunicorn worker is the loop that
    accepts connections, so the handler never waits: a timer thread signals the main thread
    again when the period is over, and the handler then calls the original one there, exactly
    as a plain SIGTERM would have.
    """

    def __init__(self, worker: Worker, seconds: float, original: _Handler) -> None:
        self.worker = worker
        self.seconds = seconds
        self.original = original
        self.started: float | None = None
        self.finished: float | None = None
        self._due = False
        self._timer: _threading.Timer | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.finished is not None:
            self.original(signum, frame)
        elif self._due:
            self._hand_over(signum, frame)
        elif self.started is None:
            self._start(signum, frame)
        # Otherwise a repeated SIGTERM during the drain: Gunicorn's master repeats it every
        # second to the old workers of a reload, and it must not cut the drain short.

    def cancel(self) -> None:
        """Stops the timer, if any (tests)."""
        if self._timer is not None:
            self._timer.cancel()

    def _start(self, signum: int, frame: FrameType | None) -> None:
        self.started = _time.monotonic()
        _drain_process()
        if self.seconds <= 0:
            self.worker.log.info("tidegate: worker %s draining, shutting down now", self.worker.pid)
            self._hand_over(signum, frame)
            return
        self.worker.log.info(
            "tidegate: worker %s draining: readiness fails, requests are still served; "
            "shutting down in %gs",
            self.worker.pid,
            self.seconds,
        )
        timer = _threading.Timer(self.seconds, self._wake)
        timer.daemon = True
        timer.name = "tidegate-drain"
        try:
            timer.start()
        except RuntimeError:  # no thread to wait with: shut down as Gunicorn would have
            self._hand_over(signum, frame)
            return
        self._timer = timer

    def _wake(self) -> None:
        self._due = True
        main = _threading.main_thread().ident
        if main is not None:
            # At the main thread itself, so its wait for connections wakes at once.
            _signal.pthread_kill(main, _signal.SIGTERM)

    def _hand_over(self, signum: int, frame: FrameType | None) -> None:
        self.finished = _time.monotonic()
        self.original(signum, frame)


def on_starting(server: Server) -> None:
    """Master start-up: checks ``TIDEGATE_DRAIN_SECONDS`` before any worker exists, so a bad
    value stops Gunicorn with a clear message, and logs the drain period in effect."""
    environ = {**os.environ, **dict(server.cfg.env or {})}
    try:
        seconds = drain_seconds(server.cfg.graceful_timeout, environ)
    except ValueError as exc:
        # Gunicorn prints a RuntimeError as "Error: ..." and exits 1.
        raise RuntimeError(str(exc)) from None
    server.log.info("tidegate: workers drain for %gs on SIGTERM", seconds)
    _create_metrics(server, environ)


#: The master's shared metrics file, and the folder made for it when it made one.
_metrics_file: str | None = None
_metrics_folder: str | None = None


def _create_metrics(server: Server, environ: Mapping[str, str]) -> None:
    global _metrics_file, _metrics_folder
    directory = environ.get(_metrics.METRICS_DIR_ENV, "").strip()
    made = None
    if not directory:
        shm = "/dev/shm"
        base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
        directory = made = tempfile.mkdtemp(prefix="tidegate-metrics-", dir=base)
    # Room for twice the configured workers: replacements start while old workers exit.
    slots = max(_metrics.DEFAULT_SLOTS, 2 * int(getattr(server.cfg, "workers", 1) or 1))
    try:
        path = _metrics.create_shared(directory, slots=slots)
    except (OSError, ValueError) as exc:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise RuntimeError(f"{_metrics.METRICS_DIR_ENV}: {exc}") from None
    _metrics_file, _metrics_folder = path, made
    os.environ[_metrics.METRICS_FILE_ENV] = path


def post_fork(server: Server, worker: Worker) -> None:
    """Worker start-up, before the app is loaded: takes a slot of the server's shared metrics
    file. A file that cannot be used leaves the worker reporting only itself, with a warning."""
    path = os.environ.get(_metrics.METRICS_FILE_ENV)
    if not path or _metrics_attached() is not None:
        return
    try:
        _metrics.attach(path)
    except (OSError, ValueError, RuntimeError) as exc:
        worker.log.warning("tidegate: metrics of worker %s stay its own: %s", worker.pid, exc)


def child_exit(server: Server, worker: Worker) -> None:
    """Master, after a worker exited: folds its counters into the metrics file's totals."""
    if _metrics_file is None:
        return
    try:
        _metrics.fold(_metrics_file, worker.pid)
    except (OSError, ValueError) as exc:
        server.log.warning("tidegate: cannot fold the metrics of worker %s: %s", worker.pid, exc)


def on_exit(server: Server) -> None:
    """Master shutdown: removes the shared metrics file (and the folder made for it)."""
    global _metrics_file, _metrics_folder
    path, folder = _metrics_file, _metrics_folder
    _metrics_file = _metrics_folder = None
    if path is None:
        return
    if os.environ.get(_metrics.METRICS_FILE_ENV) == path:
        del os.environ[_metrics.METRICS_FILE_ENV]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def post_worker_init(worker: Worker) -> None:
    """Worker start-up: installs the drain on SIGTERM (see the module documentation).

    A bad ``TIDEGATE_DRAIN_SECONDS`` raises ``ValueError`` here, so the worker fails to boot
    instead of failing at shutdown. Installing twice in one worker keeps one drain.
    """
    current = _signal.getsignal(_signal.SIGTERM)
    if isinstance(current, _Drain):
        return
    wanted = _wanted(None)
    seconds = _capped(wanted, worker.cfg.graceful_timeout)
    original: _Handler
    if callable(current):
        original = current
    else:
        handle_exit = getattr(worker, "handle_exit", None)
        if not callable(handle_exit):
            raise TypeError(f"worker: expected a Gunicorn worker with handle_exit, got {worker!r}")
        original = handle_exit
    if seconds < wanted:
        worker.log.warning(
            "tidegate: drain of %gs (%s) capped to %gs, %gs below graceful_timeout",
            wanted,
            DRAIN_SECONDS_ENV,
            seconds,
            _SHUTDOWN_MARGIN,
        )
    _signal.signal(_signal.SIGTERM, _Drain(worker, seconds, original))


def worker_exit(server: Server, worker: Worker) -> None:
    """Worker exit: logs how long the worker drained, if it did."""
    drain = _signal.getsignal(_signal.SIGTERM)
    if not isinstance(drain, _Drain) or drain.started is None:
        return
    drain.cancel()
    ended = drain.finished if drain.finished is not None else _time.monotonic()
    server.log.info(
        "tidegate: worker %s exited after draining for %.1fs", worker.pid, ended - drain.started
    )
