"""Real servers for the tests and the benchmarks: Gunicorn, waitress and uWSGI (WSGI), Uvicorn,
Hypercorn and Gunicorn with Uvicorn workers (ASGI), each on a loopback port, ready before anyone
talks to it and always stopped afterwards, its workers included, whatever the caller did. This
is the one launcher: the benchmarks import it too (their ``harness`` puts this directory on
``sys.path``).

    with GunicornServer("gunicorn_apps:application", threads=16, env={...}) as server:
        reply = server.fetch("/work")

    with SERVERS["uwsgi"]("gunicorn_apps:conformance_application") as server:
        ...

The listening socket is bound here (127.0.0.1, a free port) and handed to the server as an
inherited file descriptor (``fd://N``; Uvicorn's ``--fd N``), so no other process can take the
port between choosing and binding it. Each server runs in a session of its own: stopping it
sends SIGTERM, and past a deadline SIGKILL to the whole process group.

Gunicorn runs with a generated config that chains the caller's (``config=``) and adds two
hooks: each worker leaves a file named by its pid once the app is loaded and removes it when it
exits. Start-up waits for one file per worker; :meth:`GunicornServer.worker_pids` reads them.
waitress, uWSGI, Uvicorn and Hypercorn are ready once they answer a request for
``ready_path``.

:func:`serving` boots several servers side by side; :meth:`ServerProcess.worker_cpu` reads the
CPU time of a server's workers from ``/proc``, so a benchmark can tell which side was busy.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

TESTS_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"

T = TypeVar("T")
S = TypeVar("S", bound="ServerProcess")

_CONFIG_TEMPLATE = """\
import importlib
import os
import runpy

# Several test servers may run at once: none may claim the shared control socket (a setting
# older Gunicorns do not have, and ignore here).
control_socket_disable = True

_location = {location!r}
if _location is None:
    _settings = {{}}
elif _location.startswith("python:"):
    _settings = dict(vars(importlib.import_module(_location[len("python:"):])))
else:
    _settings = runpy.run_path(_location)
globals().update({{k: v for k, v in _settings.items() if not k.startswith("_")}})

_ready_dir = {ready_dir!r}
_chained_post_worker_init = _settings.get("post_worker_init")
_chained_worker_exit = _settings.get("worker_exit")


def post_worker_init(worker):
    if _chained_post_worker_init is not None:
        _chained_post_worker_init(worker)
    with open(os.path.join(_ready_dir, str(worker.pid)), "x"):
        pass


def worker_exit(server, worker):
    try:
        if _chained_worker_exit is not None:
            _chained_worker_exit(server, worker)
    finally:
        try:
            os.unlink(os.path.join(_ready_dir, str(worker.pid)))
        except FileNotFoundError:
            pass
"""


class ServerError(RuntimeError):
    """The server did not come up, or did not stop; the message carries its output."""


@dataclass
class Response:
    status: int
    reason: str
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def wait_for(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
    what: str = "the condition",
) -> T:
    """Calls ``probe`` until ``done`` accepts its result and returns that result; past
    ``timeout`` seconds fails the test with the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s; last: {result!r}")
        time.sleep(interval)


def _exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it: until it is reaped its
    process group cannot be reused, so signalling the group reaches only what we started."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _children_cpu(parent: int) -> float | None:
    """CPU seconds used so far by the children of ``parent``, or None without ``/proc``."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, ... utime is field 14, stime 15 (1-based).
        if int(fields[1]) == parent:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _process_cpu(pid: int) -> float | None:
    """CPU seconds used so far by the process ``pid`` itself, or None without ``/proc``."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / ticks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ServerProcess:
    """A server process serving ``app`` (``module:name``) on ``127.0.0.1:<free port>``, as a
    context manager. Subclasses say how to start it (:meth:`_command`) and when it is ready.

    ``args`` are extra command-line arguments, ``env`` extra environment variables, ``chdir``
    the directory the app is imported from (default: the tests directory), ``backlog`` the
    listening socket's queue (raise it for a burst of connections). :meth:`stop` sends SIGTERM
    and, past ``stop_timeout`` seconds, SIGKILL to the whole process group.
    """

    #: The server's name in messages.
    name = "server"

    def __init__(
        self,
        app: str,
        *,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        chdir: str | os.PathLike[str] = TESTS_DIR,
        stop_timeout: float = 5.0,
        startup_timeout: float = 10.0,
        backlog: int = 128,
    ) -> None:
        self.app = app
        self.args = list(args)
        self.env = dict(env or {})
        self.chdir = Path(chdir).resolve()
        self.stop_timeout = stop_timeout
        self.startup_timeout = startup_timeout
        self.backlog = backlog
        self.port = 0
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._last_output = ""

    # -- what each server does differently ---------------------------------------------

    def _command(self, fd: int) -> list[str]:
        """The command line serving ``self.app`` on the listening socket ``fd``."""
        raise NotImplementedError

    def _prepare(self, workdir: Path) -> None:
        """Writes what the command needs into ``workdir`` before it starts."""

    def _ready(self) -> bool:
        """Whether the server is ready for the test's requests."""
        raise NotImplementedError

    def _configure_socket(self, listener: socket.socket) -> None:
        """Sets options on the listening socket before the server inherits it."""

    # -- addresses ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The pid of the process the test started (Gunicorn's or uWSGI's master)."""
        if self._proc is None:
            raise ServerError(f"{self.name} is not running")
        return self._proc.pid

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self: S) -> S:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the server and returns once it is ready."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Starts the server without waiting for it: :meth:`wait_ready` does (see
        :func:`serving`, which boots several side by side)."""
        if self._proc is not None:
            raise ServerError(f"{self.name} is already running")
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-test-"))
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._prepare(self._workdir)
            listener.bind((HOST, 0))
            self._configure_socket(listener)
            listener.listen(self.backlog)
            self.port = listener.getsockname()[1]
            listener.set_inheritable(True)
            command = self._command(listener.fileno())
            env = {k: v for k, v in os.environ.items() if k != "GUNICORN_CMD_ARGS"}
            env.update(self.env)
            env["PYTHONUNBUFFERED"] = "1"
            with open(self._workdir / "output.log", "wb") as log:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=[listener.fileno()],
                    cwd=self.chdir,
                    start_new_session=True,
                )
        except BaseException:
            self._cleanup()
            raise
        finally:
            listener.close()

    def wait_ready(self) -> None:
        """Returns once the spawned server is ready; stops it if it never gets there."""
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to the server, SIGKILL to its process group past the deadline; idempotent."""
        proc = self._proc
        if proc is None:
            return
        try:
            if not _exited(proc.pid):
                proc.send_signal(signal.SIGTERM)
                if not self._wait_exited(self.stop_timeout):
                    os.killpg(proc.pid, signal.SIGKILL)
                    self._wait_exited(5.0)
            # Anything left in the group (a worker of a master that died) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            self.returncode = proc.wait(timeout=5.0)
        finally:
            self._proc = None
            self._last_output = self.output()
            self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _wait_exited(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while not _exited(self._proc.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _wait_until_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready():
            if _exited(self._proc.pid):
                raise ServerError(f"{self.name} exited during start-up:\n{self.output()}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} was not ready after {self.startup_timeout}s:\n{self.output()}"
                )
            time.sleep(0.02)

    # -- inspection --------------------------------------------------------------------

    def output(self) -> str:
        """What the server printed so far (its log and any traceback)."""
        if self._workdir is None:
            return self._last_output
        try:
            return (self._workdir / "output.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def worker_cpu(self) -> float | None:
        """CPU seconds used so far by the processes the server forked (Gunicorn's or uWSGI's
        workers), read from Linux ``/proc``; None where there is no ``/proc``."""
        if self._proc is None:
            return None
        return _children_cpu(self._proc.pid)

    # -- a plain client ----------------------------------------------------------------

    def connection(self, timeout: float = 5.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def fetch(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 5.0,
    ) -> Response:
        """One request on a new connection, read to the end."""
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            reply = conn.getresponse()
            data = reply.read()
            return Response(reply.status, reply.reason, reply.headers, data)
        finally:
            conn.close()


@contextlib.contextmanager
def serving(servers: Sequence[S]) -> Iterator[Sequence[S]]:
    """Every server in ``servers`` running and ready: they boot side by side, and all are
    stopped on the way out, whatever happened."""
    try:
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


class _AnswersRequests(ServerProcess):
    """A server that is ready once it answers ``GET ready_path`` (any status)."""

    def __init__(self, app: str, *, ready_path: str = "/", **options: Any) -> None:
        super().__init__(app, **options)
        self.ready_path = ready_path

    def _ready(self) -> bool:
        # The socket listens before the server runs, so a request waits in the backlog
        # until the server takes it; a short timeout lets start-up notice an exit.
        try:
            self.fetch(self.ready_path, timeout=0.5)
        except (OSError, http.client.HTTPException):
            return False
        return True


class GunicornServer(ServerProcess):
    """``python -m gunicorn APP``.

    ``threads`` is passed only when given (Gunicorn turns a ``sync`` worker with more than one
    thread into ``gthread``). ``config`` is a Gunicorn config (a file path or
    ``python:module``) whose settings and hooks apply. ``graceful_timeout`` is Gunicorn's;
    :meth:`stop` waits ``graceful_timeout + 2`` seconds before SIGKILL.
    """

    name = "gunicorn"

    def __init__(
        self,
        app: str,
        *,
        worker_class: str = "gthread",
        workers: int = 1,
        threads: int | None = None,
        config: str | os.PathLike[str] | None = None,
        graceful_timeout: int = 3,
        **options: Any,
    ) -> None:
        super().__init__(app, stop_timeout=graceful_timeout + 2.0, **options)
        self.worker_class = worker_class
        self.workers = workers
        self.threads = threads
        self.config = config
        self.graceful_timeout = graceful_timeout

    def _prepare(self, workdir: Path) -> None:
        (workdir / "ready").mkdir()
        (workdir / "config.py").write_text(
            _CONFIG_TEMPLATE.format(
                location=self._config_location(), ready_dir=str(workdir / "ready")
            )
        )

    def _command(self, fd: int) -> list[str]:
        assert self._workdir is not None
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"fd://{fd}",
            "--worker-class",
            self.worker_class,
            "--workers",
            str(self.workers),
            "--graceful-timeout",
            str(self.graceful_timeout),
            "--chdir",
            str(self.chdir),
            "--config",
            str(self._workdir / "config.py"),
        ]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        return [*command, *self.args, self.app]

    def _ready(self) -> bool:
        return len(self.worker_pids()) >= self.workers

    def _config_location(self) -> str | None:
        if self.config is None:
            return None
        location = os.fspath(self.config)
        if location.startswith("python:"):
            return location
        return str(Path(location.removeprefix("file:")).resolve())

    def worker_pids(self) -> list[int]:
        """The pids of the workers that have loaded the app and not exited."""
        if self._workdir is None:
            return []
        pids = [int(entry.name) for entry in (self._workdir / "ready").iterdir()]
        return sorted(pid for pid in pids if _alive(pid))


_WAITRESS = """\
import importlib, socket, sys
import waitress
fd, app, threads, *settings = sys.argv[1:]
module, _, name = app.partition(":")
application = getattr(importlib.import_module(module), name)
options = dict(setting.split("=", 1) for setting in settings)
waitress.serve(application, sockets=[socket.socket(fileno=int(fd))], threads=threads, **options)
"""


class WaitressServer(_AnswersRequests):
    """waitress (one process, ``threads`` threads). Its command line cannot take an inherited
    socket, so a few lines hand the socket to ``waitress.serve``; ``args`` are its settings
    as ``name=value``."""

    name = "waitress"

    def __init__(self, app: str, *, threads: int = 4, **options: Any) -> None:
        super().__init__(app, **options)
        self.threads = threads

    def _command(self, fd: int) -> list[str]:
        # ``-c`` puts the working directory, ``chdir``, first on the import path.
        return [sys.executable, "-c", _WAITRESS, str(fd), self.app, str(self.threads), *self.args]


class UwsgiServer(_AnswersRequests):
    """uWSGI with a master, ``processes`` workers of ``threads`` threads each, speaking HTTP
    on the socket; each worker imports the app itself (``--lazy-apps``), as Gunicorn's do."""

    name = "uwsgi"

    def __init__(self, app: str, *, processes: int = 1, threads: int = 4, **options: Any) -> None:
        super().__init__(app, **options)
        self.processes = processes
        self.threads = threads

    def _command(self, fd: int) -> list[str]:
        binary = uwsgi_binary()
        if binary is None:
            raise ServerError(f"uwsgi is not installed: {INSTALL_HINT}")
        command = [
            binary,
            "--http-socket",
            f"fd://{fd}",
            "--module",
            self.app,
            "--chdir",
            str(self.chdir),
            "--master",
            "--processes",
            str(self.processes),
            "--threads",
            str(self.threads),
            "--lazy-apps",
            "--need-app",
            "--die-on-term",
            "--reload-mercy",
            str(max(1, int(self.stop_timeout) - 1)),
        ]
        # uWSGI embeds its own interpreter: point it at this one's environment.
        if sys.prefix != sys.base_prefix:
            command += ["--virtualenv", sys.prefix]
        return [*command, *self.args]


class _OneProcess(_AnswersRequests):
    """A server that serves from the process the test started, with no workers."""

    def worker_cpu(self) -> float | None:
        """CPU seconds the server process used so far, read from Linux ``/proc``."""
        if self._proc is None:
            return None
        return _process_cpu(self._proc.pid)


class UvicornServer(_OneProcess):
    """``python -m uvicorn APP --fd N``: one process, one event loop. ``args`` are Uvicorn's
    options (``--limit-concurrency 8``...); :meth:`stop` gives in-flight requests
    ``stop_timeout - 1`` seconds (``--timeout-graceful-shutdown``)."""

    name = "uvicorn"

    def _configure_socket(self, listener: socket.socket) -> None:
        # Uvicorn takes an inherited socket for a Unix one, so asyncio does not set
        # TCP_NODELAY on the connections it accepts, and a response written in two parts
        # waits for the client's delayed ACK (40 ms). Linux copies the option from the
        # listening socket to each accepted one.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _command(self, fd: int) -> list[str]:
        graceful = max(1, int(self.stop_timeout) - 1)
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--fd",
            str(fd),
            "--app-dir",
            str(self.chdir),
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            str(graceful),
            *self.args,
            self.app,
        ]


class HypercornServer(_OneProcess):
    """``python -m hypercorn --bind fd://N --workers 0 APP``: asyncio, served by the process
    the test started (with workers, Hypercorn would spawn them and could leave them to be
    reaped by someone else). ``args`` are Hypercorn's options."""

    name = "hypercorn"

    def _command(self, fd: int) -> list[str]:
        graceful = max(1, int(self.stop_timeout) - 1)
        return [
            sys.executable,
            "-m",
            "hypercorn",
            "--bind",
            f"fd://{fd}",
            "--workers",
            "0",
            "--graceful-timeout",
            str(graceful),
            *self.args,
            self.app,
        ]


class GunicornUvicornServer(GunicornServer):
    """Gunicorn whose workers are Uvicorn's (``uvicorn_worker.UvicornWorker``), serving an
    ASGI app; ready once each of ``workers`` workers has loaded it."""

    name = "gunicorn-uvicorn"

    def __init__(self, app: str, *, workers: int = 1, **options: Any) -> None:
        super().__init__(app, worker_class=UVICORN_WORKER, workers=workers, **options)


UVICORN_WORKER = "uvicorn_worker.UvicornWorker"

#: Every server the tests can start, by name.
SERVERS: dict[str, type[ServerProcess]] = {
    "gunicorn": GunicornServer,
    "waitress": WaitressServer,
    "uwsgi": UwsgiServer,
}

#: The servers of ASGI apps, by name.
ASGI_SERVERS: dict[str, type[ServerProcess]] = {
    "uvicorn": UvicornServer,
    "hypercorn": HypercornServer,
    "gunicorn-uvicorn": GunicornUvicornServer,
}

#: The modules each server needs.
_MODULES = {"gunicorn-uvicorn": ("gunicorn", "uvicorn", "uvicorn_worker")}

INSTALL_HINT = "pip install -e '.[test]' (uWSGI builds from source: it needs a C compiler)"


def uwsgi_binary() -> str | None:
    """The ``uwsgi`` installed beside this Python (built against it), or on ``PATH``."""
    return shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")


def missing(name: str) -> str | None:
    """Why the server ``name`` cannot run here, or ``None`` when it can."""
    if name == "uwsgi":
        found = uwsgi_binary() is not None
    else:
        found = all(importlib.util.find_spec(module) for module in _MODULES.get(name, (name,)))
    return None if found else f"{name} is not installed: {INSTALL_HINT}"


def until_served(
    server: ServerProcess, path: str, *, clients: int, times: int, seconds: float
) -> list[Response]:
    """``clients`` threads, released together, each asking for ``path`` on one kept-alive
    connection until it has been served ``times`` times, and retrying a 503 sooner than
    Retry-After asks (to keep the gate under pressure). Every reply, in no particular order;
    a client not served within ``seconds`` fails the test."""
    barrier = threading.Barrier(clients)
    deadline = time.monotonic() + seconds

    def client(index: int) -> list[Response]:
        replies: list[Response] = []
        conn = server.connection()
        try:
            barrier.wait(timeout=10)
            while sum(reply.status == 200 for reply in replies) < times:
                assert time.monotonic() < deadline, f"client {index} was never served"
                conn.request("GET", path)
                reply = conn.getresponse()
                replies.append(Response(reply.status, reply.reason, reply.headers, reply.read()))
                assert reply.status in (200, 503), replies[-1]
                if reply.status == 503:
                    time.sleep(random.uniform(0.002, 0.01))
        finally:
            conn.close()
        return replies

    with ThreadPoolExecutor(clients) as pool:
        return [reply for batch in pool.map(client, range(clients)) for reply in batch]


#: Where the test apps (gunicorn_apps, django_site) report what they measured.
STATS_PATH = "/_stats"


def stats(server: ServerProcess) -> dict[str, Any]:
    """What the served test app measured, as its stats route reports it."""
    reply = server.fetch(STATS_PATH)
    assert reply.status == 200, reply
    document: dict[str, Any] = reply.json()
    return document


def settled(server: ServerProcess) -> dict[str, Any]:
    """The stats once nothing is in flight nor inside the app (within a few seconds)."""
    return wait_for(
        lambda: stats(server),
        lambda now: now["in_flight"] == 0 and now["inside"] == 0,
        what="nothing in flight after the clients finished",
    )
