"""A WSGI app that records into tidegate's metrics itself, for a real Gunicorn with the hooks
of ``tidegate.gunicorn``: ``/metrics`` answers a scrape (of the whole server when the worker
holds a slot of the shared file), every other path is counted as an admitted request that
takes a millisecond."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tidegate import _tidegate, metrics

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/metrics":
        _tidegate.metrics_record("probe", "none")
        content_type, body = metrics.render(environ.get("HTTP_ACCEPT"))
    else:
        started = time.monotonic()
        _tidegate.metrics_record("admitted", "none")
        time.sleep(0.001)
        _tidegate.metrics_release(time.monotonic() - started)
        content_type, body = "text/plain", str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
