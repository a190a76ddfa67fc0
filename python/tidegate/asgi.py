"""ASGI middleware: tidegate's 503 handling for any ASGI 3 app (Starlette, FastAPI, Django's
``get_asgi_application()``, a bare coroutine), over the one decision every adapter shares.

Framework-free: it never imports a framework. An ``http`` request is decided and answered by
the Rust core (:class:`tidegate._tidegate.AsgiCore`), exactly as the WSGI middleware answers
it; this module validates the options through :class:`tidegate._policy.Policy` and serves the
scopes that are not ``http``:

- ``websocket``: exempt unless ``gate_websockets=True``; then a refused handshake gets the
  503 through the ``websocket.http.response`` extension when the server offers it, and
  otherwise is accepted and closed at once with code 1013 (Try Again Later), the one way a
  client can read why;
- ``lifespan``: passed through; on ``lifespan.shutdown`` the process drains first
  (:func:`tidegate.drain_process`, readiness answers 503), then the app hears of it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from tidegate._options import Options, signature_with_options
from tidegate._policy import DEFAULT_HEALTH_PATHS, Policy, PolicyParts
from tidegate._tidegate import AsgiCore, CircuitOpenError, Permit, drain_process
from tidegate.responses import Rendered

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_HEALTH_PATHS", "TideGateMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The close code for a refused websocket when the server offers no denial response
#: (RFC 6455's registry: "Try Again Later").
TRY_AGAIN_LATER = 1013

#: The ASGI extension a server lists when it can answer a websocket handshake with HTTP.
DENIAL_EXTENSION = "websocket.http.response"


class TideGateMiddleware(PolicyParts, AsgiCore):
    """Wraps an ASGI 3 app with tidegate's 503 handling. Takes the options of
    :class:`tidegate.wsgi.TideGateMiddleware` (``limit``, ``gate``, ``maintenance``,
    ``exempt_paths``, ``health``, ...), which mean the same here, plus ``gate_websockets``.

    An admitted ``http`` request holds its permit until the server has taken the app's last
    ``http.response.body`` (``more_body`` false) or the app's coroutine ends (it returned, raised,
    or was cancelled: a client that hangs up mid-stream makes Starlette and FastAPI end a
    streamed body at once), whichever comes first. Work after the last body (Starlette's
    background tasks) holds no permit. Refusals are sent before the request body is read.
    """

    def __init__(self, app: ASGIApp, **options: Unpack[Options]) -> None:
        if not callable(app):
            raise TypeError(f"app: must be an ASGI app (a callable), got {app!r}")
        self.app = app
        self.policy = policy = Policy("TideGateMiddleware", **options)
        self._configure(
            app=app,
            decision=policy.core_config(),
            other=self._other,
            answer=_answer,
            dependency_error=CircuitOpenError,
        )
        # Servers tell an ASGI 3 app by ``iscoroutinefunction(app.__call__)`` (Uvicorn takes
        # anything else for ASGI 2, Hypercorn for WSGI), which the core's method is not. This
        # coroutine function answers them; calls to the middleware still go straight to the
        # core, since an instance attribute never replaces the type's call slot.
        core_call = AsgiCore.__call__

        async def __call__(scope: Scope, receive: Receive, send: Send) -> None:
            await core_call(self, scope, receive, send)

        self.__call__ = __call__  # type: ignore[method-assign]

    __init__.__signature__ = signature_with_options(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("app", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ]
    )

    def _other(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Every scope that is not ``http``."""
        kind = scope.get("type") if isinstance(scope, MutableMapping) else None
        if kind == "lifespan":
            return self.app(scope, _draining(receive), send)
        if kind == "websocket" and self.policy.gate_websockets:
            return self._websocket(scope, receive, send)
        return self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        verdict = self.decide(scope)
        if isinstance(verdict, Rendered):
            await _refuse_websocket(scope, receive, send, verdict)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            if isinstance(verdict, Permit):
                verdict.release()


async def _answer(send: Send, messages: list[Message], error: BaseException | None) -> None:
    """Sends ``messages`` (an answer of ours, or a held-back 500) in turn, then raises
    ``error`` (the app's, after its 500) unless it is ``None``."""
    for message in messages:
        await send(message)
    if error is not None:
        raise error


def _draining(receive: Receive) -> Receive:
    """``receive`` for the lifespan scope: the process drains before the app hears of the
    shutdown."""

    async def receive_draining() -> Message:
        message = await receive()
        if message.get("type") == "lifespan.shutdown":
            drain_process()
        return message

    return receive_draining


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send, rendered: Rendered) -> None:
    """Turns a websocket handshake away: with the 503 itself where the server can send it."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return  # the client left before the handshake: nothing to refuse
    extensions = scope.get("extensions") or {}
    if DENIAL_EXTENSION in extensions:
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in rendered.headers
        ]
        await send(
            {
                "type": "websocket.http.response.start",
                "status": rendered.status_code,
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": rendered.body})
        return
    await send({"type": "websocket.accept"})
    await send(
        {"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": rendered.reason or ""}
    )
