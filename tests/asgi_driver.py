"""A hand-written ASGI server loop for in-process tests: one request, the way a server makes
it (a scope, a ``receive`` that gives the request body and then waits for the client to hang
up, a ``send`` that records every message), checked against the ASGI message order.

    reply = run(serve(app, "GET", "/", headers={"accept": "text/html"}))
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

Message = dict[str, Any]


@dataclass
class Reply:
    """What the client got: the status line as WSGI would say it, headers, body, and every
    message the app sent."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    messages: list[Message] = field(default_factory=list)

    @property
    def header(self) -> dict[str, str]:
        return {name: value for name, value in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


def scope_for(
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    kind: str = "http",
    **extra: Any,
) -> dict[str, Any]:
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs],
        "client": client,
        "server": ("127.0.0.1", 80),
    }
    if kind == "websocket":
        del scope["method"]
    scope.update(extra)
    return scope


async def serve(
    app: Callable[..., Awaitable[None]],
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    body: bytes = b"",
    hang_up: asyncio.Event | None = None,
    **scope: Any,
) -> Reply:
    """Serves one request through ``app``. ``hang_up``, once set, makes ``receive`` say the
    client disconnected (it says so anyway once the response is complete)."""
    messages: list[Message] = []
    done = asyncio.Event()
    hang_up = hang_up or asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        waiters = [asyncio.ensure_future(done.wait()), asyncio.ensure_future(hang_up.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if hang_up.is_set():
            raise OSError("the client hung up")
        kind = message["type"]
        if not messages:
            assert kind == "http.response.start", message
        else:
            assert kind == "http.response.body", message
            assert messages[-1].get("more_body", False) or messages[-1] is messages[0], messages
        messages.append(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope_for(method, path, headers, **scope), receive, send)
    start, *bodies = messages
    headers_out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
    data = b"".join(part.get("body", b"") for part in bodies)
    return Reply(start["status"], headers_out, data, messages)


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())
