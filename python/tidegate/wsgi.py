"""WSGI middleware: shed load, serve maintenance and health, turn open breakers into 503s.

Framework-free: it wraps any WSGI app (Flask, Django's ``application``, a bare callable) and
never imports a framework. The per-request decision runs in the Rust core
(:class:`tidegate._tidegate.MiddlewareCore`); this module validates options and answers what
is off the hot path through :class:`tidegate._policy.Policy`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tidegate._policy import DEFAULT_HEALTH_PATHS, MaintenanceOption, Policy
from tidegate._tidegate import MiddlewareCore
from tidegate.responses import STATUS, Rendered

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["DEFAULT_HEALTH_PATHS", "TideGateMiddleware"]


def _dependency_errors() -> tuple[type[Exception], ...]:
    try:
        from tidegate._tidegate import CircuitOpenError
    except ImportError:
        return ()
    return (CircuitOpenError,)


class TideGateMiddleware(MiddlewareCore):
    """Wraps a WSGI app with tidegate's 503 handling. Options are keyword-only:

    - ``limit=N`` or ``gate=CapacityGate(...)``: at most that many requests in the app at once;
      the rest get an immediate 503 (reason ``overload``) with ``Retry-After`` of
      ``retry_after`` seconds plus up to ``retry_jitter`` more, picked at random per response.
      The permit is taken before the app runs and given back when the server closes the
      response (PEP 3333), or at once if the app raises: streamed bodies hold it until done.
    - ``maintenance``: a :class:`~tidegate.MaintenanceSwitch` or a state-file path; by default
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
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        limit: int | None = None,
        gate: Any = None,
        maintenance: MaintenanceOption = None,
        exempt_paths: Iterable[str] | None = None,
        health: Any = None,
        health_path: str = "/health",
        live_path: str = "/health/live",
        retry_after: int = 1,
        retry_jitter: int = 0,
        pages: Any = None,
        messages: dict[str, str] | None = None,
        template: str | None = None,
        status_url: str | None = None,
        bypass_networks: Iterable[str] = (),
        trusted_proxies: int = 0,
        bypass_header: str | None = None,
        bypass_token: str | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app: must be a WSGI callable, got {app!r}")
        self.app = app
        self.policy = policy = Policy(
            limit=limit,
            gate=gate,
            maintenance=maintenance,
            exempt_paths=exempt_paths,
            health=health,
            health_path=health_path,
            live_path=live_path,
            retry_after=retry_after,
            retry_jitter=retry_jitter,
            pages=pages,
            messages=messages,
            template=template,
            status_url=status_url,
            bypass_networks=bypass_networks,
            trusted_proxies=trusted_proxies,
            bypass_header=bypass_header,
            bypass_token=bypass_token,
        )
        routes: dict[str, object] = dict.fromkeys(policy.exempt_paths)
        if policy.health is not None:
            routes[policy.health_path] = self._serve_health
            routes[policy.live_path] = self._serve_health
        self._configure(
            app=app,
            gate=policy.gate,
            routes=routes,
            maintenance=policy.maintenance,
            on_maintenance=self._serve_maintenance,
            on_dependency=self._serve_dependency,
            dependency_error=_dependency_errors(),
            overload_status=STATUS,
            overload_variants=policy.overload_variants(),
        )

    @property
    def gate(self) -> Any:
        """The :class:`~tidegate.CapacityGate` in use, or ``None``."""
        return self.policy.gate

    @property
    def maintenance(self) -> Any:
        """The :class:`~tidegate.MaintenanceSwitch` (``None`` with ``maintenance=False``)."""
        return self.policy.maintenance

    def _serve_health(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        rendered = self.policy.health_response(path if isinstance(path, str) else "")
        if rendered is None:
            return self.app(environ, start_response)
        return _send(environ, start_response, rendered)

    def _serve_dependency(
        self, environ: WSGIEnvironment, start_response: StartResponse, error: BaseException
    ) -> Iterable[bytes]:
        rendered = self.policy.dependency_response(environ, error)
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
        return _body(environ, rendered)

    def _serve_maintenance(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes] | None:
        rendered = self.policy.maintenance_response(environ)
        return None if rendered is None else _send(environ, start_response, rendered)


def _send(
    environ: WSGIEnvironment, start_response: StartResponse, rendered: Rendered
) -> list[bytes]:
    start_response(rendered.status, list(rendered.headers))
    return _body(environ, rendered)


def _body(environ: WSGIEnvironment, rendered: Rendered) -> list[bytes]:
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [rendered.body]
