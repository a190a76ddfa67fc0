"""Flask extension: tidegate's 503 handling in Flask's request cycle, over the one decision
every adapter shares.

A ``before_request`` hook asks the decision core and answers with its 503 (or health answer)
when it says so; ``app.preprocess_request`` is wrapped so that, while that hook is the only one,
the decision runs without Flask's per-hook dispatch. The permit of an admitted request waits in
``request.environ``. ``app.process_response`` is wrapped to give it back once the response is
finished, after the app's own ``after_request`` hooks; a streamed response keeps it until the
server closes its body (``app.wsgi_app`` is wrapped for that), and a request whose exception
leaves Flask gives it back at once. Each request owns its permit: only a request the core
admitted gives one back, and exactly once. A request that another hook answered first, or that
tidegate itself turned away, releases nothing, so the limit holds under overload. A request
context that never produces a response (``app.test_request_context()`` with
``preprocess_request()``) gives its permit back when its environ is dropped.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import ServiceUnavailable

from tidegate._options import FLASK_CONFIG_KEYS, Options, signature_with_options, unknown_option
from tidegate._policy import PRIORITY_MASK, Policy, PolicyParts, priority_flag
from tidegate._tidegate import (
    EXEMPT_GATE,
    EXEMPT_MAINTENANCE,
    CircuitOpenError,
    DecisionCore,
    PreprocessRequest,
    ProcessResponse,
    ReleasingApp,
)
from tidegate.responses import Rendered

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CONFIG_PREFIX", "FLASK_CONFIG_KEYS", "TideGate", "TideGateState", "TideGateUnavailable"]

#: ``app.config`` keys are this prefix plus the option name in capitals (``TIDEGATE_LIMIT``);
#: :data:`FLASK_CONFIG_KEYS` maps every option to its key.
CONFIG_PREFIX = "TIDEGATE_"

_EXTENSION_KEY = "tidegate"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class TideGateState(PolicyParts):
    """Per-app state, found at ``app.extensions["tidegate"]``."""

    extension: TideGate
    policy: Policy
    core: DecisionCore
    #: view function -> ``EXEMPT_*`` flags for the decision core.
    exempt_views: dict[Callable[..., Any], int] = field(default_factory=dict)
    own_503_handler: bool | None = None


def _to_response(rendered: Rendered) -> Response:
    return Response(rendered.body, status=rendered.status, headers=rendered.headers)


class TideGateUnavailable(ServiceUnavailable):
    """The 503 tidegate answers with. An app's own 503 error handler receives it (its
    ``reason`` and ``retry_after`` tell why); ``Retry-After`` is put back on whatever
    response that handler makes."""

    def __init__(self, rendered: Rendered) -> None:
        super().__init__(response=_to_response(rendered), retry_after=rendered.retry_after)
        self.reason = rendered.reason
        self.rendered = rendered


class TideGate:
    """tidegate for Flask.

    ``TideGate(app, limit=8, maintenance="/run/app/maintenance.json")`` or, with an app factory,
    ``tidegate = TideGate(limit=8)`` then ``tidegate.init_app(app)``. Options are those of
    :class:`tidegate.wsgi.TideGateMiddleware`; each may also come from
    ``app.config["TIDEGATE_<OPTION>"]``, and constructor arguments win. Without a
    ``maintenance`` option the app gets a ``MaintenanceSwitch()`` (this process, and
    ``MAINTENANCE_MODE``); ``maintenance=False`` (or ``TIDEGATE_MAINTENANCE = False``) for none.
    """

    def __init__(self, app: Flask | None = None, **options: Unpack[Options]) -> None:
        error = unknown_option("TideGate", options)
        if error is not None:
            raise error
        self._options = options
        self._exempt: dict[Callable[..., Any], int] = {}
        if app is not None:
            self.init_app(app)

    __init__.__signature__ = signature_with_options(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("app", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        ]
    )

    def init_app(self, app: Flask) -> None:
        """Registers tidegate's hooks on ``app``; a second registration is a ``RuntimeError``."""
        if (
            _EXTENSION_KEY in app.extensions
            or isinstance(app.preprocess_request, PreprocessRequest)
            or isinstance(app.process_response, ProcessResponse)
        ):
            raise RuntimeError("tidegate is already registered on this app")
        options: dict[str, Any] = {
            name: app.config[key] for name, key in FLASK_CONFIG_KEYS.items() if key in app.config
        }
        options.update(self._options)
        policy = Policy("TideGate", **options)
        core = DecisionCore()
        core._configure(policy.core_config(_current_request))
        state = TideGateState(self, policy, core, self._exempt)
        getter, attrs = _CURRENT_ENVIRON
        core._bind_hooks(
            context=getter,
            attrs=attrs,
            exempt_views=self._exempt,
            exempt_of=functools.partial(_exempt_of, state),
            on_answer=functools.partial(_answer, state),
        )
        app.extensions[_EXTENSION_KEY] = state
        # A plain function around the core's method, because Flask looks far longer at any
        # other callable before calling it. It goes first in line, so excess requests are shed
        # before any other hook does work.
        before = core.before

        def tidegate_before_request() -> Response | None:
            return before()  # type: ignore[no-any-return]

        app.before_request_funcs.setdefault(None, []).insert(0, tidegate_before_request)
        # Flask's own preprocess_request only dispatches to the hooks: while tidegate's is the
        # only one, the wrapper decides without that dispatch. The decision runs where the hook
        # stands either way.
        original = app.preprocess_request
        skippable = getattr(original, "__func__", None) is Flask.preprocess_request and (
            getattr(original, "__self__", None) is app
        )
        app.preprocess_request = PreprocessRequest(  # type: ignore[method-assign]
            core, app, tidegate_before_request, original, skippable=skippable
        )
        # After the app's after_request hooks and the session: a finished response gives its
        # permit back there, a streamed one when the server closes its body. If the app raises
        # out of Flask, the permit goes back at once.
        app.process_response = ProcessResponse(core, app.process_response)  # type: ignore[method-assign]
        app.wsgi_app = ReleasingApp(app.wsgi_app)  # type: ignore[method-assign,assignment]
        if CircuitOpenError not in app.error_handler_spec.get(None, {}).get(None, {}):
            app.register_error_handler(
                CircuitOpenError, functools.partial(_on_dependency_error, state)
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
            self._exempt[fn] = (
                (EXEMPT_GATE if gate else 0)
                | (EXEMPT_MAINTENANCE if maintenance else 0)
                | (self._exempt.get(fn, 0) & PRIORITY_MASK)
            )
            return fn

        return mark(view) if view is not None else mark

    def priority(self, level: str, /) -> Callable[[F], F]:
        """Gives a view a priority: ``@tidegate.priority("critical")`` (or ``"default"``,
        ``"sheddable"``). Under pressure sheddable views are refused first and critical ones
        last; see ``priority_shares``."""
        flag = priority_flag(level)

        def mark(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"priority: expected a view function, got {fn!r}")
            self._exempt[fn] = (self._exempt.get(fn, 0) & ~PRIORITY_MASK) | flag
            return fn

        return mark


def _current_request(environ: Any) -> Any:
    """The ``priority`` callable's argument: the request being decided."""
    return request._get_current_object()  # type: ignore[attr-defined]


# -- what the core's hooks call back -----------------------------------------------------------


def _current_environ() -> tuple[Callable[[], Any], tuple[str, ...]]:
    """How the core finds the current request's environ: Flask's request context variable
    when this Flask has one (2.2 and later), else the public ``request`` proxy."""
    try:
        from flask.globals import _cv_request
    except ImportError:  # pragma: no cover - a Flask without the context variable
        return (lambda: request), ("environ",)
    return _cv_request.get, ("request", "environ")


_CURRENT_ENVIRON = _current_environ()


def _exempt_of(state: TideGateState) -> int:
    """The ``EXEMPT_*`` flags of the current request's view (asked only when some view is
    exempt)."""
    view = current_app.view_functions.get(request.endpoint or "")
    return state.exempt_views.get(view, 0) if view is not None else 0


def _on_dependency_error(state: TideGateState, error: Exception) -> Any:
    return _answer(state, state.core.dependency(request.environ, error))


def _answer(state: TideGateState, rendered: Rendered) -> Response:
    """The response for ``rendered``: itself, or, for a 503 of ours when the app has its own
    503 handler, what that handler makes of a :class:`TideGateUnavailable`, with Retry-After
    and ``Cache-Control: no-store`` put back if the handler left them out."""
    if rendered.reason is None:  # a health answer: never the app's to restyle
        return _to_response(rendered)
    if state.own_503_handler is None:
        state.own_503_handler = _has_own_503_handler(current_app._get_current_object())  # type: ignore[attr-defined]
    if not state.own_503_handler:
        return _to_response(rendered)
    handled = current_app.handle_http_exception(TideGateUnavailable(rendered))
    response = current_app.make_response(handled)
    if response.status_code == 503:
        response.headers.setdefault("Retry-After", str(rendered.retry_after))
        response.headers.setdefault("Cache-Control", "no-store")
    return response


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
