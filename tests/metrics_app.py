"""A WSGI app behind ``TideGateMiddleware`` with ``metrics_path="/metrics"``, for a real
Gunicorn with the hooks of ``tidegate.gunicorn``: each request is counted by the decision
itself, and a scrape answers for the whole server when the worker holds a slot of the shared
file. Routes: ``/work`` (admitted; its body is the worker's pid), ``/exempt`` (exempt),
``/dependency`` (admitted, then the app meets an open breaker: the dependency 503)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tidegate import CircuitBreaker
from tidegate.wsgi import TideGateMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

_database = CircuitBreaker("metrics-db", failure_threshold=1, reset_timeout=600)


def _unreachable() -> None:
    raise AssertionError("an open breaker ran the call")


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/dependency":
        _database.open()
        _database.call(_unreachable)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = TideGateMiddleware(
    _app, limit=4, maintenance=False, exempt_paths=["/exempt"], metrics_path="/metrics"
)
