"""WSGI middleware: shed load, serve maintenance and health, turn open breakers into 503s.

Framework-free: it wraps any WSGI app (Flask, Django's ``application``, a bare callable) and
never imports a framework. The per-request decision runs in the Rust core (the one decision
every adapter shares, with :class:`tidegate._tidegate.MiddlewareCore` adding what is WSGI's
own); this module validates the options through :class:`tidegate._policy.Policy`.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING

from tidegate._options import Options, signature_with_options
from tidegate._policy import DEFAULT_HEALTH_PATHS, Policy, PolicyParts
from tidegate._tidegate import MiddlewareCore
from tidegate.responses import Rendered

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication
    from typing_extensions import Unpack

__all__ = ["DEFAULT_HEALTH_PATHS", "TideGateMiddleware"]


def _dependency_errors() -> tuple[type[Exception], ...]:
    try:
        from tidegate._tidegate import CircuitOpenError
    except ImportError:
        return ()
    return (CircuitOpenError,)


class TideGateMiddleware(PolicyParts, MiddlewareCore):
    """Wraps a WSGI app with tidegate's 503 handling. Options are keyword-only:

    - ``limit=N`` or ``gate=CapacityGate(...)``: at most that many requests in the app at once;
      the rest get an immediate 503 (reason ``overload``) with ``Retry-After`` of
      ``retry_after`` seconds plus up to ``retry_jitter`` more, picked at random per response.
      The permit is taken before the app runs and given back when the server closes the
      response (PEP 3333), or at once if the app raises: streamed bodies hold it until done.
    - ``maintenance``: a :class:`~tidegate.MaintenanceSwitch`, a state-file path or a Redis
      store URI (``redis://``, ``rediss://``, ``unix://``: one switch for a fleet); by default
      (``None``) a ``MaintenanceSwitch()`` of this process that also follows the
      ``MAINTENANCE_MODE`` environment variable; ``False`` for none. While it is on, requests
      get the maintenance 503 unless they come from ``bypass_networks`` (the peer address, or
      ``X-Forwarded-For`` read through ``trusted_proxies`` proxies) or carry ``bypass_header``
      with the value ``bypass_token`` (compared in constant time).
    - ``exempt_paths``: paths never gated nor put in maintenance (default: the health paths).
    - ``health``: a :class:`~tidegate.HealthChecks` served at ``health_path`` (readiness) and
      ``live_path`` (liveness).
    - An unhandled :class:`~tidegate.CircuitOpenError` from the app becomes a 503 with reason
      ``dependency`` and the breaker's time to its next probe as ``Retry-After``.
    - ``pages`` (or ``messages``, ``template``, ``status_url``) shape the 503 body.
    - ``metrics_path``: where to serve Prometheus metrics (:mod:`tidegate.metrics`; off by
      default), exempt from the gate and maintenance. Decisions are counted once anything
      wants the numbers (a ``metrics_path``, ``metrics=True``, a
      :class:`~tidegate.metrics.TideGateCollector`, the Gunicorn hooks' shared file): about
      0.1 us per admitted request; ``metrics=False`` never counts this adapter's.
    """

    def __init__(self, app: WSGIApplication, **options: Unpack[Options]) -> None:
        if not callable(app):
            raise TypeError(f"app: must be a WSGI callable, got {app!r}")
        self.app = app
        self.policy = policy = Policy("TideGateMiddleware", **options)
        self._configure(
            app=app,
            decision=policy.core_config(),
            start_dependency=_start_dependency,
            dependency_error=_dependency_errors(),
        )

    __init__.__signature__ = signature_with_options(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("app", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ]
    )


def _start_dependency(
    start_response: StartResponse, rendered: Rendered, error: BaseException
) -> None:
    """Starts the dependency 503 the core rendered for ``error``; the core sends its body (none
    for HEAD)."""
    try:
        # The usual case: the app raised before starting a response. No exc_info here:
        # clients that re-raise whenever it is given (Werkzeug's test client) would turn
        # a response that can still be sent into an error.
        start_response(rendered.status, list(rendered.headers))
        refused = False
    except Exception:
        # A PEP 3333 server refuses a second start_response without exc_info, with an
        # error of its choosing: the app had started a response of its own.
        refused = True
    if refused:
        # Given the app's error as exc_info, the server replaces the headers it has not sent
        # yet, or re-raises the error when they are already out. It is raised again here,
        # out of the handler above, so that it is also the exception being handled, with
        # no server error chained to it: wsgiref re-raises that one, not exc_info.
        try:
            raise error
        except BaseException:
            start_response(rendered.status, list(rendered.headers), sys.exc_info())
