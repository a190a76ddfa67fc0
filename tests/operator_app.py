"""A WSGI app for the operator tests under a real Gunicorn: TideGateMiddleware following the
state file named by ``TIDEGATE_TEST_STATE``, polled every ``TIDEGATE_TEST_POLL`` seconds
(default 0.2), with health endpoints.

Every response, the middleware's 503s and health answers included, carries the pid of the
worker that answered in ``X-Worker-Pid``, so a test can tell that each worker followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tidegate import HealthChecks, MaintenanceSwitch
from tidegate.wsgi import TideGateMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

POLL_INTERVAL = float(os.environ.get("TIDEGATE_TEST_POLL", "0.2"))


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    body = f"hello from {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def tag_with_pid(app: WSGIApplication) -> WSGIApplication:
    def tagged(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

        # The body goes back untouched, so the server still calls its close().
        return app(environ, start)

    return tagged


switch = MaintenanceSwitch(
    os.environ["TIDEGATE_TEST_STATE"], env_var=None, poll_interval=POLL_INTERVAL
)
application = tag_with_pid(TideGateMiddleware(hello, maintenance=switch, health=HealthChecks()))
