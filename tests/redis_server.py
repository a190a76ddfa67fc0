"""A real ``redis-server`` for the tests and the benchmarks: on a free loopback port (and a Unix
socket beside it), persistence off, in a folder of its own, always stopped afterwards.

    with RedisServer() as redis:
        switch = MaintenanceSwitch(redis.uri(key="app"))
        redis.pause()      # SIGSTOP: the port still accepts, nothing answers
        redis.resume()
        redis.stop(); redis.start()   # the same port and socket again

``RedisServer(tls=True)`` also listens with TLS on ``tls_port``, with a certificate for
127.0.0.1 signed by a CA made for it (``ca_path``), made with ``openssl``.
``redis.cli("GET", "k")`` runs one command through ``redis-cli`` (on the plain port). Where
no ``redis-server`` is installed, :func:`redis_missing` says how to install it; under ``CI`` a
missing server is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
INSTALL = "install it with: sudo apt-get install -y redis-server (Debian/Ubuntu)"


def redis_missing() -> str | None:
    """Why no Redis can run here, or ``None`` when it can."""
    for name in ("redis-server", "redis-cli"):
        if shutil.which(name) is None:
            return f"{name} is not installed: {INSTALL}"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class RedisServer:
    def __init__(self, *, password: str | None = None, tls: bool = False) -> None:
        self.password = password
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self._dir = Path(tempfile.mkdtemp(prefix="tidegate-redis-"))
        self.socket_path = self._dir / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None
        if tls:
            self._make_certificates()

    @property
    def ca_path(self) -> Path:
        return self._dir / "ca.pem"

    def _make_certificates(self) -> None:
        """A CA, and a certificate for 127.0.0.1 it signed."""
        d = self._dir

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=tidegate test CA",
            "-keyout", str(d / "ca.key"), "-out", str(self.ca_path),
        )  # fmt: skip
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
        )  # fmt: skip
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl(
            "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(self.ca_path),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(d / "san.ext"), "-out", str(d / "server.pem"),
        )  # fmt: skip

    def tls_uri(self, *, key: str | None = None, ca: bool = True) -> str:
        query = [f"key={key}"] if key else []
        if ca:
            query.append(f"ca={self.ca_path}")
        auth = f":{self.password}@" if self.password else ""
        tail = "?" + "&".join(query) if query else ""
        return f"rediss://{auth}{HOST}:{self.tls_port}/0{tail}"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def uri(self, *, key: str | None = None, password: str | None = None, db: int = 0) -> str:
        secret = password if password is not None else self.password
        auth = f":{secret}@" if secret else ""
        query = f"?key={key}" if key else ""
        return f"redis://{auth}{HOST}:{self.port}/{db}{query}"

    def unix_uri(self, *, key: str | None = None) -> str:
        query = [f"key={key}"] if key else []
        if self.password:
            query.append(f"password={self.password}")
        return f"unix://{self.socket_path}" + ("?" + "&".join(query) if query else "")

    def start(self) -> None:
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", HOST,
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        if self.tls_port is not None:
            command += [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(self._dir / "server.pem"),
                "--tls-key-file", str(self._dir / "server.key"),
                "--tls-ca-cert-file", str(self.ca_path),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while self.cli("PING").strip() not in ("PONG", "NOAUTH"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def cli(self, *args: str) -> str:
        """One command through ``redis-cli``; its output (an error reply is output too)."""
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        done = subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=False,
        )
        return done.stdout + done.stderr

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, sig)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait(timeout=10)
