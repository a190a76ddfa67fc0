"""tidegate.asgi.TideGateMiddleware in process: a hand-written server loop (``asgi_driver``)
and httpx's ASGI transport in front of bare ASGI apps, Starlette and FastAPI."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import inspect
from typing import Any

import httpx
import pytest
from asgi_driver import Message, run, scope_for, serve
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tidegate import (
    CapacityGate,
    CircuitBreaker,
    HealthChecks,
    MaintenanceSwitch,
    process_draining,
    undrain_process,
)
from tidegate.asgi import TRY_AGAIN_LATER, TideGateMiddleware

TOKEN = "s3cret-token-0123456789"


class Boom(Exception):
    pass


class Recorder:
    """A bare ASGI app that counts requests inside it (``inside``, ``worst``) and answers by
    path: ``/`` at once, ``/stream`` three chunks, ``/wait`` after ``release`` is set,
    ``/raise`` raises before starting, ``/after`` works on after its last body."""

    def __init__(self) -> None:
        self.inside = 0
        self.worst = 0
        self.calls = 0
        self.release = asyncio.Event()
        self.after_body_gate: list[int] = []
        self.gate: CapacityGate | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        self.inside += 1
        self.worst = max(self.worst, self.inside)
        try:
            path = scope["path"]
            if path == "/raise":
                raise Boom("before start")
            if path == "/wait":
                await self.release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            if path == "/stream":
                for _ in range(3):
                    await asyncio.sleep(0)
                    await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await send({"type": "http.response.body", "body": b"ok"})
            if path == "/after" and self.gate is not None:
                self.after_body_gate.append(self.gate.in_flight)
        finally:
            self.inside -= 1


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def empty_body() -> Message:
    """A ``receive`` for a request with no body."""
    return {"type": "http.request", "body": b""}


async def ignore(message: Message) -> None:
    """A ``send`` that takes every message at once."""


def middleware(app: Any, **options: Any) -> TideGateMiddleware:
    options.setdefault("maintenance", False)
    return TideGateMiddleware(app, **options)


# -- admitted requests ------------------------------------------------------------------------


def test_an_admitted_request_reaches_the_app_and_gives_its_permit_back(recorder: Recorder) -> None:
    app = middleware(recorder, limit=2)
    reply = run(serve(app, "GET", "/"))
    assert (reply.status, reply.body) == (200, b"ok")
    assert app.gate.in_flight == 0 and app.gate.admitted == 1


def test_a_streamed_body_holds_its_permit_until_the_last_body(recorder: Recorder) -> None:
    seen: list[int] = []
    app = middleware(recorder, limit=2)

    async def watching_send_loop() -> None:
        async def send(message: Message) -> None:
            seen.append(app.gate.in_flight)

        await app(scope_for("GET", "/stream"), empty_body, send)

    run(watching_send_loop())
    # start, three chunks with more_body, the last body: held while any is on its way.
    assert seen == [1, 1, 1, 1, 1]
    assert app.gate.in_flight == 0


def test_work_after_the_last_body_holds_no_permit(recorder: Recorder) -> None:
    app = middleware(recorder, limit=1)
    recorder.gate = app.gate
    run(serve(app, "GET", "/after"))
    assert recorder.after_body_gate == [0]


def test_starlette_background_tasks_run_after_the_permit_went_back() -> None:
    gate = CapacityGate(1)
    seen: list[int] = []

    async def index(request: Request) -> Response:
        task = BackgroundTask(lambda: seen.append(gate.in_flight))
        return PlainTextResponse("ok", background=task)

    app = middleware(Starlette(routes=[Route("/", index)]), gate=gate)
    assert asgi_get(app, "/").status_code == 200
    assert seen == [0] and gate.in_flight == 0


def test_an_app_that_raises_gives_its_permit_back(recorder: Recorder) -> None:
    app = middleware(recorder, limit=1)
    with pytest.raises(Boom):
        run(serve(app, "GET", "/raise"))
    assert app.gate.in_flight == 0


def test_a_cancelled_request_gives_its_permit_back(recorder: Recorder) -> None:
    app = middleware(recorder, limit=1)

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(serve(app, "GET", "/wait"))
        while recorder.inside == 0:
            await asyncio.sleep(0)
        assert app.gate.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_midway())
    assert app.gate.in_flight == 0 and recorder.inside == 0


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
def test_an_awaitable_never_awaited_gives_its_permit_back(recorder: Recorder) -> None:
    app = middleware(recorder, limit=1)

    async def never() -> None:
        pending = app(scope_for("GET", "/wait"), empty_body, ignore)
        assert app.gate.in_flight == 1
        del pending

    run(never())
    gc.collect()
    assert app.gate.in_flight == 0 and recorder.inside == 0


def test_the_app_runs_when_the_call_is_awaited_not_when_it_is_made(recorder: Recorder) -> None:
    app = middleware(recorder, limit=1)

    async def call_then_await() -> None:
        pending = app(scope_for("GET", "/raise"), empty_body, ignore)  # the call itself succeeds
        assert recorder.calls == 0  # not entered yet
        with pytest.raises(Boom):
            await pending

    run(call_then_await())
    assert app.gate.in_flight == 0


def test_the_app_runs_in_the_task_that_awaits_it() -> None:
    # asyncio.gather, create_task and asyncio.run each await the middleware's awaitable in a
    # task of their own: the app must run there (an anyio task group or a timeout binds to
    # the current task), with that task's context.
    gate = CapacityGate(8)
    seen: list[asyncio.Task[Any] | None] = []
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(asyncio.current_task())
        request_id.set("set by the app")
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = middleware(app, gate=gate)

    async def many() -> None:
        caller = asyncio.current_task()
        await asyncio.gather(*(wrapped(scope_for(), empty_body, ignore) for _ in range(3)))
        task = asyncio.create_task(wrapped(scope_for(), empty_body, ignore))  # type: ignore[arg-type]
        await task
        assert caller not in seen and task in seen and len(set(seen)) == 4
        assert request_id.get() == ""  # the apps' context was their tasks', not ours

    run(many())
    # No loop runs while asyncio.run's argument is made: the app must not start before.
    asyncio.run(wrapped(scope_for(), empty_body, ignore))  # type: ignore[arg-type]
    assert gate.in_flight == 0 and len(seen) == 5


def test_a_last_body_the_server_takes_slowly_holds_the_permit_until_it_is_taken(
    recorder: Recorder,
) -> None:
    app = middleware(recorder, limit=1)
    seen: list[tuple[str, int]] = []

    async def slow_send(message: Message) -> None:
        # A client that reads slowly: the server's send waits for the socket, more than once.
        for _ in range(3):
            await asyncio.sleep(0)
            seen.append((message["type"], app.gate.in_flight))

    async def serve_one() -> None:
        await app(scope_for("GET", "/"), empty_body, slow_send)
        seen.append(("after", app.gate.in_flight))

    run(serve_one())
    start, body = [("http.response.start", 1)] * 3, [("http.response.body", 1)] * 3
    assert seen == start + body + [("after", 0)]


def test_a_last_body_send_can_be_handed_to_a_task_of_its_own() -> None:
    # What send() returns for a last body is a coroutine by collections.abc's rules, as the
    # server's own send is: create_task takes it whether the server took the body at once or
    # had to wait.
    gate = CapacityGate(1)
    bodies: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.create_task(send({"type": "http.response.body", "body": b"ok"}))

    async def send_at_once(message: Message) -> None:
        bodies.extend([message["body"]] if "body" in message else [])

    async def send_after_a_wait(message: Message) -> None:
        await asyncio.sleep(0)
        await send_at_once(message)

    for send in (send_at_once, send_after_a_wait):
        run(middleware(app, gate=gate)(scope_for("GET", "/"), empty_body, send))
        assert gate.in_flight == 0
    assert bodies == [b"ok", b"ok"]


def test_a_last_body_the_server_fails_to_send_raises_in_the_app_and_gives_the_permit_back() -> None:
    gate = CapacityGate(1)
    raised: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.body", "body": b"ok"})
        except OSError as error:
            raised.append(str(error))

    async def broken_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection reset")

    async def waiting_broken_send(message: Message) -> None:
        await asyncio.sleep(0)
        await broken_send(message)

    for send in (broken_send, waiting_broken_send):
        run(middleware(app, gate=gate)(scope_for("GET", "/"), empty_body, send))
        assert gate.in_flight == 0
    assert raised == ["connection reset"] * 2


def test_a_streamed_body_cut_by_a_hang_up_gives_its_permit_back() -> None:
    gate = CapacityGate(1)
    started = asyncio.Event()

    async def endless(request: Request) -> Response:
        async def chunks() -> Any:
            started.set()
            while True:
                yield b"data: tick\n\n"
                await asyncio.sleep(0.001)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    app = middleware(Starlette(routes=[Route("/events", endless)]), gate=gate)

    async def hang_up_midway() -> None:
        hang_up = asyncio.Event()
        task = asyncio.ensure_future(serve(app, "GET", "/events", hang_up=hang_up))
        await started.wait()
        await asyncio.sleep(0.01)
        assert gate.in_flight == 1
        hang_up.set()
        # Starlette ends the stream when it hears of the disconnect, or when send fails
        # (then raising ClientDisconnect).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)

    run(hang_up_midway())
    assert gate.in_flight == 0


# -- refusals ---------------------------------------------------------------------------------


def held(gate: CapacityGate) -> Any:
    return gate.try_acquire()


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_overload_is_refused_before_the_body_is_read(method: str, recorder: Recorder) -> None:
    gate = CapacityGate(1)
    app = middleware(recorder, gate=gate, retry_after=3)
    received: list[Message] = []

    async def refused() -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            received.append({})
            return {"type": "http.request", "body": b"x" * 10}

        async def send(message: Message) -> None:
            sent.append(message)

        await app(scope_for(method, "/"), receive, send)
        return sent

    with held(gate):
        start, body = run(refused())
        assert gate.in_flight == 1 and gate.rejected == 1
    assert received == [] and recorder.calls == 0
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"3"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) > 0
    if method == "HEAD":
        assert body["body"] == b""
    else:
        assert len(body["body"]) == int(headers[b"content-length"])
        assert b'"reason":"overload"' in body["body"]


def test_a_browser_gets_the_html_page(recorder: Recorder) -> None:
    gate = CapacityGate(1)
    app = middleware(recorder, gate=gate)
    with held(gate):
        reply = run(serve(app, "GET", "/", {"Accept": "text/html,*/*;q=0.8"}))
    assert reply.status == 503
    assert reply.header["content-type"].startswith("text/html")
    assert reply.body.startswith(b"<!doctype html>")


def test_maintenance_with_its_bypasses(recorder: Recorder) -> None:
    switch = MaintenanceSwitch(env_var=None)
    switch.enable(message="Back <soon>", retry_after=120)
    app = TideGateMiddleware(
        recorder,
        maintenance=switch,
        bypass_header="X-Bypass",
        bypass_token=TOKEN,
        bypass_networks=["10.0.0.0/8"],
        trusted_proxies=1,
    )
    reply = run(serve(app, "GET", "/"))
    assert reply.status == 503 and reply.header["retry-after"] == "120"
    assert reply.json()["reason"] == "maintenance" and reply.json()["message"] == "Back <soon>"
    assert run(serve(app, "GET", "/", {"X-Bypass": TOKEN})).status == 200
    assert run(serve(app, "GET", "/", {"X-Bypass": TOKEN[:-1] + "x"})).status == 503
    forwarded = {"X-Forwarded-For": "10.1.2.3"}
    assert run(serve(app, "GET", "/", forwarded, client=("192.0.2.1", 1))).status == 200
    assert run(serve(app, "GET", "/", {"X-Forwarded-For": "192.0.2.9"})).status == 503
    switch.disable()
    assert run(serve(app, "GET", "/")).status == 200


def test_health_paths_are_served_and_exempt_paths_skip_the_gate(recorder: Recorder) -> None:
    gate = CapacityGate(1)
    health = HealthChecks()
    app = middleware(recorder, gate=gate, health=health, exempt_paths=["/health", "/free"])
    with held(gate):
        ready = run(serve(app, "GET", "/health"))
        assert ready.status == 200 and ready.json()["status"] == "ready"
        assert run(serve(app, "GET", "/free")).status == 200
        assert run(serve(app, "GET", "/")).status == 503
    assert gate.in_flight == 0 and gate.admitted == 1


def test_paths_are_read_below_the_root_path(recorder: Recorder) -> None:
    gate = CapacityGate(1)
    app = middleware(recorder, gate=gate, exempt_paths=["/free"])
    with held(gate):
        reply = run(serve(app, "GET", "/api/free", root_path="/api"))
        assert reply.status == 200
        assert run(serve(app, "GET", "/apifree", root_path="/api")).status == 503


# -- the dependency 503 -----------------------------------------------------------------------

breaker = CircuitBreaker("asgi-db", failure_threshold=1, reset_timeout=600)


def through_open_breaker() -> str:
    breaker.open()
    return breaker.call(lambda: "fresh")


def test_an_open_breaker_before_the_response_is_the_dependency_503() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        through_open_breaker()

    gate = CapacityGate(1)
    reply = run(serve(middleware(app, gate=gate), "GET", "/"))
    assert reply.status == 503 and reply.json()["reason"] == "dependency"
    assert int(reply.header["retry-after"]) == 600
    assert gate.in_flight == 0


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_an_open_breaker_through_a_framework_is_the_dependency_503(framework: str) -> None:
    if framework == "starlette":

        async def view(request: Request) -> Response:
            return PlainTextResponse(through_open_breaker())

        app: Any = Starlette(routes=[Route("/db", view)])
    else:
        app = FastAPI()

        @app.get("/db")
        async def db() -> str:
            return through_open_breaker()

    gate = CapacityGate(1)
    reply = asgi_get(middleware(app, gate=gate), "/db")
    assert reply.status_code == 503 and reply.json()["reason"] == "dependency"
    assert gate.in_flight == 0


def test_an_open_breaker_after_the_response_started_is_raised() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        through_open_breaker()

    gate = CapacityGate(1)

    async def go() -> list[Message]:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        with pytest.raises(Exception, match="is open"):
            await middleware(app, gate=gate)(scope_for(), None, send)
        return sent

    sent = run(go())
    assert [m["status"] for m in sent] == [200]
    assert gate.in_flight == 0


def test_a_500_of_the_app_goes_out_as_it_was() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": b"oops", "more_body": True})
        await send({"type": "http.response.body", "body": b"!"})
        if scope["path"] == "/raise":
            raise Boom("after the 500")

    reply = run(serve(middleware(app, limit=1), "GET", "/"))
    assert (reply.status, reply.header["x-app"], reply.body) == (500, "1", b"oops!")
    with pytest.raises(Boom):
        run(serve(middleware(app, limit=1), "GET", "/raise"))


# -- websockets and lifespan ------------------------------------------------------------------


async def websocket_app(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 1000})


def websocket(app: Any, extensions: dict[str, Any] | None = None) -> list[Message]:
    async def go() -> list[Message]:
        sent: list[Message] = []
        inbox = [{"type": "websocket.connect"}]

        async def receive() -> Message:
            return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = scope_for(path="/ws", kind="websocket", extensions=extensions or {})
        await app(scope, receive, send)
        return sent

    return run(go())


def test_websockets_are_exempt_by_default() -> None:
    gate = CapacityGate(1)
    with held(gate):
        sent = websocket(middleware(websocket_app, gate=gate))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]


def test_a_gated_websocket_is_refused_with_the_503_where_the_server_can_send_it() -> None:
    gate = CapacityGate(1)
    app = middleware(websocket_app, gate=gate, gate_websockets=True, retry_after=4)
    with held(gate):
        start, body = websocket(app, {"websocket.http.response": {}})
        accepted, closed = websocket(app)
    assert start["type"] == "websocket.http.response.start" and start["status"] == 503
    assert dict(start["headers"])[b"retry-after"] == b"4"
    assert b'"reason":"overload"' in body["body"]
    assert accepted["type"] == "websocket.accept"
    assert closed == {"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": "overload"}
    sent = websocket(app)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert gate.in_flight == 0 and gate.admitted == 2


def test_lifespan_shutdown_drains_before_the_app_hears_of_it() -> None:
    heard: list[tuple[str, bool]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            heard.append((message["type"], process_draining()))
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def go() -> None:
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive() -> Message:
            return inbox.pop(0)

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        await middleware(app, limit=1)(scope, receive, ignore)

    try:
        run(go())
        assert heard == [("lifespan.startup", False), ("lifespan.shutdown", True)]
    finally:
        undrain_process()


# -- many at once -----------------------------------------------------------------------------


def test_many_clients_never_put_more_than_the_limit_inside(recorder: Recorder) -> None:
    app = middleware(recorder, limit=4, retry_after=1)

    async def crowd() -> list[Any]:
        async def client(index: int) -> list[Any]:
            replies = []
            for _ in range(20):
                replies.append(await serve(app, "GET", "/stream" if index % 2 else "/"))
                await asyncio.sleep(0)
            return replies

        batches = await asyncio.gather(*(client(i) for i in range(32)))
        return [reply for batch in batches for reply in batch]

    replies = run(crowd())
    assert recorder.worst <= 4 and recorder.worst == 4
    refused = [r for r in replies if r.status == 503]
    assert refused and len(replies) == 32 * 20
    for reply in refused:
        assert {"retry-after", "cache-control", "content-type", "content-length"} <= set(
            reply.header
        )
    assert app.gate.in_flight == 0
    assert app.gate.admitted + app.gate.rejected == len(replies)


# -- helpers ----------------------------------------------------------------------------------


def asgi_get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, **kwargs)

    return run(go())


def test_not_an_app_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="app: must be an ASGI app"):
        TideGateMiddleware(5)  # type: ignore[arg-type]


def test_servers_tell_the_middleware_is_an_asgi_3_app(recorder: Recorder) -> None:
    # Uvicorn asks asyncio, Hypercorn asks inspect, both about ``app.__call__``.
    app = middleware(recorder, limit=1)
    assert inspect.iscoroutinefunction(app.__call__)
    assert asyncio.iscoroutinefunction(app.__call__)
    # What they then call answers as the middleware does.
    reply = run(serve(app.__call__, "GET", "/"))
    assert (reply.status, reply.body) == (200, b"ok")
    assert app.gate.admitted == 1 and app.gate.in_flight == 0
