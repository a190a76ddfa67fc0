"""Django middleware: tidegate's 503 handling for a Django project, over the one decision every
adapter shares.

``"tidegate.django.TideGateMiddleware"`` goes first in ``settings.MIDDLEWARE``; its options come
from ``settings.TIDEGATE``, a dict with the option names of
:class:`tidegate.wsgi.TideGateMiddleware` (``{"limit": 16, "retry_jitter": 3}``), read once when
Django builds the middleware. ``@tidegate.django.exempt`` marks views.

The middleware only translates: the request's ``META`` (the WSGI environ) and the view's
exemption go to the decision core, and what the core answers (a 503, or a health answer)
becomes an ``HttpResponse`` with the renderer's status, headers and bytes. An admitted request
gives its permit back when Django's response is closed, which the server does once it has sent
the body, so a streamed response holds it until its stream is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from django.conf import settings
from django.http import HttpResponse
from django.urls import Resolver404, resolve

from tidegate._options import Options, unknown_option
from tidegate._policy import Policy, PolicyParts, priority_flag
from tidegate._tidegate import (
    EXEMPT_GATE,
    EXEMPT_MAINTENANCE,
    CircuitOpenError,
    DecisionCore,
)
from tidegate.responses import Rendered

__all__ = [
    "EXEMPT_ATTRIBUTE",
    "PRIORITY_ATTRIBUTE",
    "SETTING",
    "TideGateMiddleware",
    "exempt",
    "priority",
]

#: The Django setting the options come from: ``TIDEGATE = {"limit": 16, ...}``.
SETTING = "TIDEGATE"

#: Where :func:`exempt` leaves a view's ``EXEMPT_*`` flags: on the view itself, as Django's
#: ``csrf_exempt`` does, so decorators that copy a function's ``__dict__`` keep the mark and a
#: class-based view's ``as_view()`` carries a mark set on its ``dispatch``.
EXEMPT_ATTRIBUTE = "tidegate_exempt"

#: Where :func:`priority` leaves a view's level, the same way.
PRIORITY_ATTRIBUTE = "tidegate_priority"

#: Where the middleware leaves the request for the ``priority`` callable (only when one is set).
_REQUEST_KEY = "tidegate.request"

F = TypeVar("F", bound=Callable[..., Any])

#: How many paths each middleware remembers the exemption of.
_PATHS_REMEMBERED = 1024

#: Whether any view has been marked in this process; until one is, no request resolves its view.
_views_marked = False


@overload
def exempt(view: F, /) -> F: ...
@overload
def exempt(
    view: None = None, /, *, gate: bool = True, maintenance: bool = True
) -> Callable[[F], F]: ...
def exempt(
    view: F | None = None, /, *, gate: bool = True, maintenance: bool = True
) -> F | Callable[[F], F]:
    """Exempts a view: ``@exempt`` from both the gate and maintenance;
    ``@exempt(maintenance=False)`` from the gate only (it still shows the maintenance page);
    ``@exempt(gate=False)`` from maintenance only. Marks a view function, the function
    ``as_view()`` returns, a class-based view's class, or its ``dispatch`` (through
    ``method_decorator``)."""

    flags = (EXEMPT_GATE if gate else 0) | (EXEMPT_MAINTENANCE if maintenance else 0)

    def mark(fn: F) -> F:
        return _set_mark(fn, "exempt", EXEMPT_ATTRIBUTE, flags)

    return mark(view) if view is not None else mark


def priority(level: str, /) -> Callable[[F], F]:
    """Gives a view a priority: ``@priority("critical")`` (or ``"default"``, ``"sheddable"``).
    Under pressure sheddable views are refused first and critical ones last; see
    ``priority_shares``. Marks views as :func:`exempt` does."""
    flag = priority_flag(level)

    def mark(fn: F) -> F:
        return _set_mark(fn, "priority", PRIORITY_ATTRIBUTE, flag)

    return mark


def _set_mark(fn: F, decorator: str, attribute: str, flags: int) -> F:
    """Leaves ``flags`` on the view ``fn`` for the middleware; errors name ``decorator``."""
    global _views_marked
    if not callable(fn):
        raise TypeError(f"{decorator}: expected a view, got {fn!r}")
    try:
        setattr(fn, attribute, flags)
    except (AttributeError, TypeError):
        raise TypeError(
            f"{decorator}: cannot mark {fn!r} (no attributes can be set on it)"
        ) from None
    _views_marked = True
    return fn


def _mark(view: object, attribute: str) -> int:
    flags = getattr(view, attribute, None)
    if flags is None:
        # A class-based view marked on its class.
        flags = getattr(getattr(view, "view_class", None), attribute, 0)
    return flags if isinstance(flags, int) and not isinstance(flags, bool) else 0


def _exempt_flags(view: object) -> int:
    return _mark(view, EXEMPT_ATTRIBUTE) | _mark(view, PRIORITY_ATTRIBUTE)


def _options(configured: object) -> Options:
    """``settings.TIDEGATE`` as options; a misspelt name is a ``TypeError`` that names it."""
    if not isinstance(configured, Mapping):
        raise TypeError(
            f"{SETTING}: must be a dict of tidegate options, such as "
            f'{{"limit": 16}}, got {configured!r}'
        )
    for name in configured:
        if not isinstance(name, str):
            raise TypeError(f"{SETTING}: option names must be str, got {name!r}")
    error = unknown_option(SETTING, configured)
    if error is not None:
        raise error
    options: dict[str, Any] = dict(configured)
    return options  # type: ignore[return-value]


def _request_of(meta: Any) -> Any:
    """The ``priority`` callable's argument: the request the middleware left in ``META``."""
    return meta.get(_REQUEST_KEY)


def _to_response(rendered: Rendered, body: bytes) -> Any:
    """The ``HttpResponse`` for ``rendered``: its status, every header and ``body`` (the core's
    ``body_for``: none for ``HEAD``, which keeps the ``GET``'s headers; Django's WSGI handler
    sends whatever body a response holds, and not every server drops it for ``HEAD``)."""
    response = HttpResponse(
        body,
        status=rendered.status_code,
        reason=rendered.reason_phrase or None,
        headers=rendered.headers,
    )
    # Django logs every 5xx as an error (and mails the admins); a deliberate 503 is not one,
    # and logging each shed request would add work exactly when there is too much.
    response._has_been_logged = True
    return response


class TideGateMiddleware(PolicyParts):
    """tidegate for Django; first in ``settings.MIDDLEWARE``.

    Options come from ``settings.TIDEGATE`` (see :class:`tidegate.wsgi.TideGateMiddleware` for
    each one); without a ``maintenance`` option the project gets a ``MaintenanceSwitch()`` that
    follows ``MAINTENANCE_MODE``, and ``"maintenance": False`` means none. Health answers
    (``health``) are served at ``health_path`` and ``live_path`` without any URL pattern. A
    :class:`~tidegate.CircuitOpenError` out of a view becomes the dependency 503.

    Each request is decided once, in ``__call__``, before any other middleware runs. When some
    view is marked with :func:`exempt`, the request's view is resolved here (from
    ``ROOT_URLCONF``) to find its mark; ``process_view`` would come too late, after every other
    middleware has done its work, and never for a path no URL pattern matches.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.policy = policy = Policy(SETTING, **_options(getattr(settings, SETTING, {})))
        core = DecisionCore()
        core._configure(policy.core_config(_request_of))
        #: Whether the ``priority`` callable needs the request: it is then left in ``META``.
        self._keep_request = policy.priority is not None
        self._core = core
        self._decide = core.decide
        self._release = core.release
        self._hand_over = core.hand_over
        # Until the URLconf has been imported (by the first resolve), its views may not be
        # marked yet; afterwards a request resolves only if some view was.
        self._resolving = True
        self._flags_by_path: dict[tuple[object, str], int] = {}

    def __call__(self, request: Any) -> Any:
        meta = request.META
        if self._keep_request:
            meta[_REQUEST_KEY] = request
        rendered = self._decide(meta, self._view_flags(request) if self._resolving else 0)
        if rendered is not None:
            return _to_response(rendered, self._core.body_for(meta, rendered))
        try:
            response = self.get_response(request)
        except BaseException:
            # Django turns an Exception into a response before it gets here; what still
            # arrives (DEBUG_PROPAGATE_EXCEPTIONS, a worker's SystemExit) ends the request.
            self._release(meta)
            raise
        permit = self._hand_over(meta)
        if permit is not None:
            # Django closes its own resources the same way (the request's files): the server
            # calls close() once the body is sent, or the stream is done or abandoned.
            closers = getattr(response, "_resource_closers", None)
            if isinstance(closers, list):
                closers.append(permit.release)
            else:
                permit.release()
        return response

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """The dependency 503 for an open circuit; any other exception is Django's to handle."""
        if not isinstance(exception, CircuitOpenError):
            return None
        meta = request.META
        rendered = self._core.dependency(meta, exception)
        return _to_response(rendered, self._core.body_for(meta, rendered))

    def _view_flags(self, request: Any) -> int:
        key = (settings.ROOT_URLCONF, request.path_info)
        flags = self._flags_by_path.get(key)
        if flags is not None:
            return flags
        try:
            flags = _exempt_flags(resolve(key[1], key[0]).func)
        except Resolver404:
            flags = 0
        if not _views_marked:
            self._resolving = False
        # Resolving costs more than the rest of the middleware; a path resolves the same way
        # until the URLconf changes. Bounded, so that clients inventing paths cannot grow it:
        # once full, other paths are resolved each time.
        if len(self._flags_by_path) < _PATHS_REMEMBERED:
            self._flags_by_path[key] = flags
        return flags
