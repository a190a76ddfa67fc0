"""ASGI apps for the real-server tests, each behind tidegate.asgi.TideGateMiddleware; the app
measures from inside how many requests it is handling at once (``gunicorn_apps.Meter``).

Uvicorn, Hypercorn and Gunicorn with Uvicorn workers import them from the tests directory:
``asgi_apps:bare_application`` (a hand-written ASGI 3 app; ``middleware_application`` is the
same app behind the middleware with nothing around it), ``asgi_apps:starlette_application``
(the middleware in Starlette's middleware list), ``asgi_apps:fastapi_application`` (added with
``add_middleware``) and ``django_asgi:application`` (Django's ASGI application wrapped by hand).
The environment sets them up: ``TIDEGATE_TEST_LIMIT`` is the limit (default 4),
``TIDEGATE_TEST_STATE`` a state file to follow for maintenance (every 50 ms), and
``TIDEGATE_TEST_GATE_WEBSOCKETS=1`` gates websockets. Every response, tidegate's 503s
included, names the answering worker in ``X-Worker-Pid``. Routes:

- ``/work?ms=50``: holds for ``ms`` milliseconds, then answers ``done``.
- ``/stream?chunks=100&ms=10``: ``chunks`` chunks of ``tick\\n``, ``ms`` milliseconds apart; it
  counts as inside the app until its last chunk is sent or the stream is cut short.
- ``/sse?events=100&ms=10``: server-sent events (``data: N``), counted the same way.
- ``/ws`` (websocket): accepts, echoes each text message, and closes when the client does.
- ``/_stats`` (exempt from the gate and maintenance): JSON with the app's own counts
  (``inside``, ``worst``, ``entered``, ``streams_started``, ``streams_finished``,
  ``streams_closed_early``), the gate's (``in_flight``, ``peak``, ``admitted``, ``rejected``,
  ``limit``) and the worker's ``pid``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from gunicorn_apps import CHUNK, Meter, state_switch
from servers import STATS_PATH
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tidegate import CapacityGate
from tidegate.asgi import ASGIApp as App
from tidegate.asgi import Message, Receive, Scope, Send, TideGateMiddleware

LIMIT = int(os.environ.get("TIDEGATE_TEST_LIMIT", "4"))
GATE_WEBSOCKETS_ENV = "TIDEGATE_TEST_GATE_WEBSOCKETS"
PID_HEADER = "x-worker-pid"

#: The gate every app of this process shares, so ``/_stats`` can read it.
GATE = CapacityGate(LIMIT)
meter = Meter()


#: The middleware's options, the same for every app.
OPTIONS: dict[str, Any] = {
    "gate": GATE,
    "maintenance": state_switch() or False,
    "exempt_paths": [STATS_PATH],
    "gate_websockets": os.environ.get(GATE_WEBSOCKETS_ENV) == "1",
}


def stats() -> dict[str, Any]:
    return meter.report(GATE)


def number(query: str, name: str, default: int) -> int:
    values = parse_qs(query).get(name)
    return int(values[0]) if values else default


async def work(ms: int) -> bytes:
    meter.enter()
    try:
        await asyncio.sleep(ms / 1000)
        return b"done"
    finally:
        meter.leave()


async def ticks(count: int, ms: int, chunk: Callable[[int], bytes]) -> AsyncIterator[bytes]:
    """``count`` chunks ``ms`` milliseconds apart, inside the app until the last is sent or
    the stream is cut (cancelled or closed)."""
    meter.enter()
    with meter.lock:
        meter.streams_started += 1
    finished = False
    try:
        for index in range(count):
            if index:
                await asyncio.sleep(ms / 1000)
            yield chunk(index)
        finished = True
        with meter.lock:
            meter.streams_finished += 1
    finally:
        if not finished:
            with meter.lock:
                meter.streams_closed_early += 1
        meter.leave()


def tick(index: int) -> bytes:
    return CHUNK


def event(index: int) -> bytes:
    return f"data: {index}\n\n".encode()


def tagged(app: App) -> App:
    """``app`` with the worker's pid on every response."""

    async def with_pid(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                pid = (PID_HEADER.encode(), str(os.getpid()).encode())
                message = {**message, "headers": [*message.get("headers", []), pid]}
            await send(message)

        await app(scope, receive, send_tagged)

    return with_pid


# -- a bare ASGI app ---------------------------------------------------------------------------


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _stream(receive: Receive, send: Send, chunks: AsyncIterator[bytes], kind: bytes) -> None:
    """Sends ``chunks`` until they end or the client hangs up, whichever comes first."""
    headers = [(b"content-type", kind), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def pump() -> None:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def hang_up() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    sending, listening = asyncio.ensure_future(pump()), asyncio.ensure_future(hang_up())
    try:
        await asyncio.wait({sending, listening}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, listening):
            task.cancel()
        await asyncio.gather(sending, listening, return_exceptions=True)
        await chunks.aclose()  # type: ignore[attr-defined]


async def _echo(receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """A lifespan scope, for an app with nothing to start or stop: each event completes."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def ws_echo(websocket: WebSocket) -> None:
    """``/ws`` in Starlette and FastAPI: echoes each text message until the client leaves."""
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        return


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await _echo(receive, send)
        return
    path, query = scope["path"], scope["query_string"].decode("latin-1")
    if path == STATS_PATH:
        await _respond(send, 200, json.dumps(stats()).encode(), b"application/json")
    elif path == "/work":
        await _respond(send, 200, await work(number(query, "ms", 50)), b"text/plain")
    elif path == "/stream":
        chunks = ticks(number(query, "chunks", 100), number(query, "ms", 10), tick)
        await _stream(receive, send, chunks, b"text/plain")
    elif path == "/sse":
        chunks = ticks(number(query, "events", 100), number(query, "ms", 10), event)
        await _stream(receive, send, chunks, b"text/event-stream")
    else:
        await _respond(send, 404, b"no such route", b"text/plain")


bare_application = tagged(TideGateMiddleware(bare, **OPTIONS))
#: The middleware itself as the server's app, with nothing around it: the server must tell
#: it is ASGI 3 (no ``X-Worker-Pid`` here).
middleware_application = TideGateMiddleware(bare, **OPTIONS)


# -- Starlette, with the middleware in its list --------------------------------------------------


def _starlette() -> App:
    async def work_view(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await work(int(request.query_params.get("ms", 50))))

    async def stream_view(request: Request) -> StreamingResponse:
        params = request.query_params
        chunks = ticks(int(params.get("chunks", 100)), int(params.get("ms", 10)), tick)
        return StreamingResponse(chunks, media_type="text/plain")

    async def sse_view(request: Request) -> StreamingResponse:
        params = request.query_params
        chunks = ticks(int(params.get("events", 100)), int(params.get("ms", 10)), event)
        return StreamingResponse(chunks, media_type="text/event-stream")

    async def stats_view(request: Request) -> JSONResponse:
        return JSONResponse(stats())

    return Starlette(
        routes=[
            Route("/work", work_view),
            Route("/stream", stream_view),
            Route("/sse", sse_view),
            Route(STATS_PATH, stats_view),
            WebSocketRoute("/ws", ws_echo),
        ],
        middleware=[Middleware(TideGateMiddleware, **OPTIONS)],
    )


starlette_application = tagged(_starlette())


# -- FastAPI, with add_middleware ----------------------------------------------------------------


def _fastapi() -> App:
    # FastAPI reads the annotations: the classes they name are imported at the top.
    api = FastAPI()
    api.add_middleware(TideGateMiddleware, **OPTIONS)

    @api.get("/work", response_class=PlainTextResponse)
    async def work_view(ms: int = 50) -> bytes:
        return await work(ms)

    @api.get("/stream")
    async def stream_view(chunks: int = 100, ms: int = 10) -> StreamingResponse:
        return StreamingResponse(ticks(chunks, ms, tick), media_type="text/plain")

    @api.get("/sse")
    async def sse_view(events: int = 100, ms: int = 10) -> StreamingResponse:
        return StreamingResponse(ticks(events, ms, event), media_type="text/event-stream")

    @api.get(STATS_PATH)
    async def stats_view() -> dict[str, Any]:
        return stats()

    api.add_api_websocket_route("/ws", ws_echo)
    return api


fastapi_application = tagged(_fastapi())
