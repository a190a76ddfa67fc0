"""Flask extension: tidegate's 503 handling as ``before_request`` / ``after_request`` /
``teardown_request`` hooks.

Each request owns its permit: only a request this extension admitted gives one back, and
exactly once. A request that another hook answered first, or that tidegate itself turned away,
releases nothing, so the limit holds under overload. A streamed response keeps its permit until
the server closes the body, not merely until the view returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import ServiceUnavailable

from tidegate._policy import OPTION_NAMES, Policy
from tidegate._tidegate import CircuitOpenError, Permit
from tidegate.responses import Rendered

__all__ = ["CONFIG_PREFIX", "TideGate", "TideGateState", "TideGateUnavailable"]

#: ``app.config`` keys are this prefix plus the option name in capitals (``TIDEGATE_LIMIT``).
CONFIG_PREFIX = "TIDEGATE_"

_EXTENSION_KEY = "tidegate"
_REQUEST_KEY = "tidegate.flask.request"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _Exemption:
    gate: bool
    maintenance: bool


class _RequestState:
    """What tidegate knows about one request: the permit it owns, if any."""

    __slots__ = ("handed_to_body", "permit", "retry_after")

    def __init__(self) -> None:
        self.permit: Permit | None = None
        self.handed_to_body = False
        self.retry_after: int | None = None


@dataclass
class TideGateState:
    """Per-app state, found at ``app.extensions["tidegate"]``."""

    extension: TideGate
    policy: Policy
    exempt_views: dict[Callable[..., Any], _Exemption] = field(default_factory=dict)
    own_503_handler: bool | None = None

    @property
    def gate(self) -> Any:
        """The app's :class:`~tidegate.CapacityGate`, or ``None``."""
        return self.policy.gate

    @property
    def maintenance(self) -> Any:
        """The app's :class:`~tidegate.MaintenanceSwitch` (``None`` with ``maintenance=False``)."""
        return self.policy.maintenance


def _to_response(rendered: Rendered) -> Response:
    return Response(rendered.body, status=rendered.status, headers=rendered.headers)


class TideGateUnavailable(ServiceUnavailable):
    """The 503 tidegate answers with. An app's own 503 error handler receives it (its
    ``reason`` and ``retry_after`` tell why); ``Retry-After`` is put back on whatever
    response that handler makes."""

    def __init__(self, rendered: Rendered, reason: str, retry_after: int) -> None:
        super().__init__(
            response=_to_response(rendered),
            retry_after=retry_after,
        )
        self.reason = reason


class TideGate:
    """tidegate for Flask.

    ``TideGate(app, limit=8, maintenance="/run/app/maintenance.json")`` or, with an app factory,
    ``tidegate = TideGate(limit=8)`` then ``tidegate.init_app(app)``. Options are those of
    :class:`tidegate.wsgi.TideGateMiddleware`; each may also come from
    ``app.config["TIDEGATE_<OPTION>"]``, and constructor arguments win. Without a
    ``maintenance`` option the app gets a ``MaintenanceSwitch()`` (this process, and
    ``MAINTENANCE_MODE``); ``maintenance=False`` (or ``TIDEGATE_MAINTENANCE = False``) for none.
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"TideGate: unknown option {unknown[0]!r}")
        self._options = options
        self._exempt: dict[Callable[..., Any], _Exemption] = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Registers tidegate's hooks on ``app``; a second registration is a ``RuntimeError``."""
        if _EXTENSION_KEY in app.extensions:
            raise RuntimeError("tidegate is already registered on this app")
        options = {
            name: app.config[CONFIG_PREFIX + name.upper()]
            for name in OPTION_NAMES
            if CONFIG_PREFIX + name.upper() in app.config
        }
        options.update(self._options)
        state = TideGateState(self, Policy(**options), self._exempt)
        app.extensions[_EXTENSION_KEY] = state
        # First in line, so excess requests are shed before any other hook does work.
        app.before_request_funcs.setdefault(None, []).insert(
            0, functools.partial(self._before_request, state)
        )
        app.after_request(self._after_request)
        app.teardown_request(self._teardown_request)
        if CircuitOpenError not in app.error_handler_spec.get(None, {}).get(None, {}):
            app.register_error_handler(
                CircuitOpenError, functools.partial(self._on_dependency_error, state)
            )

    @overload
    def exempt(self, view: F, /) -> F: ...
    @overload
    def exempt(
        self, view: None = None, /, *, gate: bool = True, maintenance: bool = True
    ) -> Callable[[F], F]: ...
    def exempt(
        self, view: F | None = None, /, *, gate: bool = True, maintenance: bool = True
    ) -> F | Callable[[F], F]:
        """Exempts a view: ``@tidegate.exempt`` from both the gate and maintenance;
        ``@tidegate.exempt(maintenance=False)`` from the gate only (it still shows the
        maintenance page); ``@tidegate.exempt(gate=False)`` from maintenance only."""

        def mark(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"exempt: expected a view function, got {fn!r}")
            self._exempt[fn] = _Exemption(gate=gate, maintenance=maintenance)
            return fn

        return mark(view) if view is not None else mark

    # -- hooks -------------------------------------------------------------------------
    # Registered per app with that app's state bound in, so a request never looks it up
    # through ``current_app``; each hook touches the ``request`` proxy once.

    def _before_request(self, state: TideGateState) -> Response | None:
        req = request._get_current_object()  # type: ignore[attr-defined]
        policy = state.policy
        path = req.path
        if path in policy.exempt_paths:
            health = policy.health_response(path)
            return None if health is None else _to_response(health)
        exemption = None
        if state.exempt_views:
            view = current_app.view_functions.get(req.endpoint or "")
            exemption = state.exempt_views.get(view) if view is not None else None
        environ = req.environ
        mine = _RequestState()
        environ[_REQUEST_KEY] = mine
        switch = policy.maintenance
        if (
            switch is not None
            and switch.active
            and (exemption is None or not exemption.maintenance)
        ):
            rendered = policy.maintenance_response(environ)
            if rendered is not None:
                return self._reject(state, mine, rendered, "maintenance")
        gate = policy.gate
        if gate is not None and (exemption is None or not exemption.gate):
            permit = gate.try_acquire()
            if permit is None:
                return self._reject(state, mine, policy.overload(environ), "overload")
            mine.permit = permit
        return None

    def _after_request(self, response: Response) -> Response:
        mine: _RequestState | None = request.environ.get(_REQUEST_KEY)
        if mine is None:
            return response
        permit = mine.permit
        if permit is not None and response.is_streamed and not permit.released:
            response.call_on_close(permit.release)
            mine.handed_to_body = True
        if mine.retry_after is not None and response.status_code == 503:
            response.headers.setdefault("Retry-After", str(mine.retry_after))
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _teardown_request(self, exc: BaseException | None = None) -> None:
        mine: _RequestState | None = request.environ.get(_REQUEST_KEY)
        if mine is not None and mine.permit is not None and not mine.handed_to_body:
            mine.permit.release()

    def _on_dependency_error(self, state: TideGateState, error: Exception) -> Any:
        environ = request.environ
        mine = environ.setdefault(_REQUEST_KEY, _RequestState())
        rendered = state.policy.dependency_response(environ, error)
        return self._reject(state, mine, rendered, "dependency")

    @staticmethod
    def _reject(
        state: TideGateState, mine: _RequestState, rendered: Rendered, reason: str
    ) -> Response:
        """The 503 itself, or, when the app has its own 503 handler, what that handler makes
        of a :class:`TideGateUnavailable` (Retry-After is restored in ``after_request``)."""
        retry_after = int(dict(rendered.headers)["Retry-After"])
        mine.retry_after = retry_after
        if state.own_503_handler is None:
            state.own_503_handler = _has_own_503_handler(current_app._get_current_object())  # type: ignore[attr-defined]
        if not state.own_503_handler:
            return _to_response(rendered)
        handled = current_app.handle_http_exception(
            TideGateUnavailable(rendered, reason, retry_after)
        )
        return current_app.make_response(handled)


def _has_own_503_handler(app: Flask) -> bool:
    """Whether ``app`` (or any of its blueprints) handles 503s itself: by code, or by a class
    :class:`TideGateUnavailable` derives from. Read once: Flask forbids new handlers after
    the first request."""
    for by_code in app.error_handler_spec.values():
        for code, handlers in by_code.items():
            if code == 503:
                return True
            if code is None and any(issubclass(TideGateUnavailable, cls) for cls in handlers):
                return True
    return False
