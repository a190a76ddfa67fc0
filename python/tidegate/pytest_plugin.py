"""pytest fixtures that put an app in maintenance, at capacity or draining for one test, then
undo it.

The plugin comes with tidegate (entry point ``pytest11``), so the fixtures are there in every
test session. With plugin autoloading off (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), load it with
``-p tidegate`` or ``-p tidegate.pytest_plugin``.

A target is a :class:`~tidegate.MaintenanceSwitch` or :class:`~tidegate.CapacityGate`, a
:class:`~tidegate.wsgi.TideGateMiddleware` or :class:`~tidegate.asgi.TideGateMiddleware`, an
app wrapped in one (a Starlette or FastAPI app with it in its middleware list, or any chain of
middlewares that keep the app they wrap as ``.app``), or a Flask app with the
:class:`~tidegate.flask.TideGate` extension (``app.extensions["tidegate"]``)::

    def test_the_maintenance_page(app, client, tidegate_maintenance):
        tidegate_maintenance(app, message="Back at noon")
        assert client.get("/").status_code == 503

    def test_overload(app, client, tidegate_at_capacity):
        tidegate_at_capacity(app)
        assert client.get("/").headers["Retry-After"]

Maintenance goes on in this process only (``enable(local=True)``): a state file is never
written, so other processes sharing it see nothing and a test killed halfway leaves nothing
behind. This process's own maintenance outranks the file's, so the app shows the fixture's
message. At teardown the switch's own maintenance is put back exactly as it was (message, end
estimate, Retry-After); the file and the environment variable were never touched, so whatever
they say still holds.

A Starlette or FastAPI app builds its middleware the first time it is called: a fixture given
such an app builds it then, as Starlette would (so middleware cannot be added to the app
afterwards), to reach the very middleware that will answer its requests.

At capacity takes every free permit of the gate (its ``limit`` when nothing is in flight) and
releases them at teardown. The gate's ``admitted`` and ``peak`` counters count those permits.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import pytest

from tidegate._policy import PolicyParts
from tidegate._tidegate import (
    AdaptiveGate,
    CapacityGate,
    MaintenanceSwitch,
    Permit,
    drain_process,
    process_draining,
    undrain_process,
)

__all__ = [
    "CapacityFixture",
    "MaintenanceFixture",
    "tidegate_at_capacity",
    "tidegate_draining",
    "tidegate_maintenance",
]

#: The name of the ``pytest11`` entry point, and the module's own.
_PLUGIN_NAMES = ("tidegate", __name__)

_T = TypeVar("_T")


class MaintenanceFixture(Protocol):
    """The ``tidegate_maintenance`` fixture: switches maintenance on for the test and returns
    the switch. The keyword arguments are those of ``MaintenanceSwitch.enable``."""

    def __call__(
        self,
        target: object,
        *,
        message: str | None = None,
        until: datetime | None = None,
        retry_after: int | timedelta | None = None,
    ) -> MaintenanceSwitch: ...


class CapacityFixture(Protocol):
    """The ``tidegate_at_capacity`` fixture: takes every free permit for the test and returns
    the gate."""

    def __call__(self, target: object) -> CapacityGate | AdaptiveGate: ...


@pytest.fixture
def tidegate_maintenance() -> Iterator[MaintenanceFixture]:
    """Puts a target in maintenance for this test (see the module documentation)."""
    saved: list[tuple[MaintenanceSwitch, Any]] = []

    def enable(
        target: object,
        *,
        message: str | None = None,
        until: datetime | None = None,
        retry_after: int | timedelta | None = None,
    ) -> MaintenanceSwitch:
        switch = _find(target, "maintenance", MaintenanceSwitch, "maintenance switch")
        before = switch._local_state()
        switch.enable(message=message, until=until, retry_after=retry_after, local=True)
        saved.append((switch, before))
        return switch

    try:
        yield enable
    finally:
        # Newest first, so a switch enabled twice ends as it was before the first call.
        for switch, before in reversed(saved):
            switch._restore_local(before)


@pytest.fixture
def tidegate_at_capacity() -> Iterator[CapacityFixture]:
    """Puts a target at capacity for this test (see the module documentation)."""
    held: list[Permit] = []

    def fill(target: object) -> CapacityGate | AdaptiveGate:
        gate: CapacityGate | AdaptiveGate
        try:
            gate = _find(target, "gate", CapacityGate, "capacity gate")
        except (TypeError, ValueError) as error:
            # A limit that sets itself is filled up to where it stands now: nothing held is
            # released during the test, so no sample moves it meanwhile.
            try:
                gate = _find(target, "gate", AdaptiveGate, "capacity gate")
            except (TypeError, ValueError):
                raise error from None
        while (permit := gate.try_acquire()) is not None:
            held.append(permit)
        return gate

    try:
        yield fill
    finally:
        for permit in held:
            permit.release()


@pytest.fixture
def tidegate_draining() -> Iterator[None]:
    """Makes this process drain for the test (:func:`tidegate.drain_process`): readiness
    answers 503 with reason ``"draining"`` while requests are served. A drain already in
    effect before the test stays."""
    already = process_draining()
    drain_process()
    try:
        yield
    finally:
        if not already:
            undrain_process()


def _find(target: object, attribute: str, kind: type[_T], what: str) -> _T:
    """The switch or gate ``target`` is, or the one its middleware or Flask app uses."""
    if isinstance(target, kind):
        return target
    owner = target
    extensions = getattr(target, "extensions", None)
    if isinstance(extensions, dict):
        owner = extensions.get("tidegate")
        if owner is None:
            raise TypeError(
                f"target: {target!r} has no tidegate extension; "
                "register it with TideGate(app) or TideGate().init_app(app)"
            )
    elif not isinstance(target, PolicyParts):
        owner = _wrapped_middleware(target) or target
    found = getattr(owner, attribute, None)
    if isinstance(found, kind):
        return found
    if hasattr(owner, "maintenance") and hasattr(owner, "gate"):
        # Only a gate can be missing by default; a switch only with maintenance=False.
        how = (
            "it was built with maintenance=False"
            if attribute == "maintenance"
            else "configure it with limit= or gate="
        )
        raise ValueError(f"target: {target!r} has no {what}; {how}")
    raise TypeError(
        f"target: expected a {kind.__name__}, a TideGateMiddleware (or an app wrapped in one) "
        f"or a Flask app with TideGate, got {target!r}"
    )


#: How deep :func:`_wrapped_middleware` looks: far more middlewares than any app stacks.
_MAX_DEPTH = 64


def _wrapped_middleware(app: object) -> PolicyParts | None:
    """The tidegate middleware inside ``app``: down Starlette's middleware stack (built as its
    first request would build it) and the ``.app`` each middleware keeps; ``None`` if there
    is none."""
    node = app
    seen: set[int] = set()
    for _ in range(_MAX_DEPTH):
        if isinstance(node, PolicyParts):
            return node
        if id(node) in seen:
            return None
        seen.add(id(node))
        build = getattr(node, "build_middleware_stack", None)
        if callable(build) and hasattr(node, "middleware_stack"):
            stack = getattr(node, "middleware_stack", None)
            if stack is None:
                stack = build()
                node.middleware_stack = stack
            node = stack
        else:
            node = getattr(node, "app", None)
        if node is None:
            return None
    return None


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Registered under one of its two names (the entry point's when autoloaded; the module's
    with ``-p tidegate.pytest_plugin`` or ``pytest_plugins``), block the other, which would
    otherwise register this module a second time: pytest refuses that with an error."""
    if plugin is not sys.modules[__name__]:
        return
    for name in _PLUGIN_NAMES:
        if not manager.has_plugin(name) and not manager.is_blocked(name):
            manager.set_blocked(name)
