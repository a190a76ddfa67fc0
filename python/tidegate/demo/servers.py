"""The demo's servers, each on 127.0.0.1 in a thread of its own until :meth:`Running.close`:
the standard library's threaded WSGI server, Uvicorn (when installed) for the ASGI shop, and a
minimal asyncio HTTP/1.1 server for the ASGI shop where Uvicorn is not installed."""

from __future__ import annotations

import asyncio
import contextlib
import http
import importlib.util
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from tidegate.asgi import ASGIApp, Message

HOST = "127.0.0.1"


#: The ASGI servers the demo can use, best first.
ASGI_SERVERS = ("uvicorn", "asyncio")


@dataclass
class Running:
    """A server serving on ``port`` until :meth:`close`, which returns once every thread it
    started has ended."""

    name: str
    port: int
    close: Callable[[], None]


def asgi_server() -> str:
    """The ASGI server the demo uses here: Uvicorn if installed, else the asyncio one."""
    return "uvicorn" if importlib.util.find_spec("uvicorn") is not None else "asyncio"


def _listening() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        sock.listen(256)  # a burst must not overflow the backlog
    except BaseException:
        sock.close()
        raise
    return sock


# -- WSGI: the standard library's server ----------------------------------------------------


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every request thread
    request_queue_size = 256  # a burst must not overflow the listen backlog

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's name, which can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name = HOST
        self.server_port = self.server_address[1]
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up early is not news here


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_wsgi(app: Any) -> Running:
    server = _Server((HOST, 0), _QuietHandler)
    server.set_app(app)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="tidegate-demo-server"
    )
    thread.start()

    def close() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return Running("wsgiref", server.server_address[1], close)


# -- ASGI ------------------------------------------------------------------------------------


def serve_asgi(app: ASGIApp, server: str) -> Running:
    """``app`` served by ``server`` (one of :data:`ASGI_SERVERS`)."""
    if server == "uvicorn":
        return _serve_uvicorn(app)
    if server == "asyncio":
        return _serve_asyncio(app)
    raise ValueError(f"server: one of {', '.join(ASGI_SERVERS)}, got {server!r}")


def _serve_uvicorn(app: ASGIApp) -> Running:
    import uvicorn

    sock = _listening()
    # No lifespan: its shutdown would drain this whole process. No logging set-up: the
    # demo's process keeps its own.
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tidegate-demo-uvicorn"
    )
    thread.start()
    port = sock.getsockname()[1]

    def close() -> None:
        server.should_exit = True
        thread.join()
        sock.close()

    return Running("uvicorn", port, close)


def _serve_asyncio(app: ASGIApp) -> Running:
    """A minimal HTTP/1.1 server for the ASGI shop: one request per connection (the demo's
    clients open one each), no request bodies, the response written as the app sends it
    and the connection closed after it."""
    sock = _listening()
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    ready = threading.Event()

    async def main() -> None:
        server = await asyncio.start_server(
            lambda reader, writer: _exchange(app, reader, writer), sock=sock
        )
        ready.set()
        async with server:
            await stopping.wait()
        # Every connection still open ends with its task; wait for them all.
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)

    def run() -> None:
        try:
            loop.run_until_complete(main())
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=run, name="tidegate-demo-asyncio")
    thread.start()
    ready.wait()
    port = sock.getsockname()[1]

    def close() -> None:
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join()
        sock.close()

    return Running("asyncio", port, close)


async def _exchange(
    app: ASGIApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        writer.close()
        return
    method, target, version = parts
    path, _, query = target.partition("?")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            field = (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
            headers.append(field)
    host, port = writer.get_extra_info("sockname")[:2]
    peer = writer.get_extra_info("peername")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": version.removeprefix("HTTP/"),
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "client": tuple(peer[:2]) if peer else None,
        "server": (host, port),
    }
    requested = started = False
    closed = asyncio.Event()

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await closed.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
            status = int(message["status"])
            out = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
            for name, value in message.get("headers", []):
                if bytes(name).lower() != b"connection":
                    out.append(bytes(name) + b": " + bytes(value) + b"\r\n")
            out.append(b"connection: close\r\n\r\n")
            writer.write(b"".join(out))
        elif message["type"] == "http.response.body":
            writer.write(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                closed.set()
        await writer.drain()

    try:
        await app(scope, receive, send)
    except Exception:
        if not started:  # the middleware answered whatever it could; this is the rest
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n\r\n")
    finally:
        closed.set()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
