"""Every option of tidegate's adapters, defined once.

:class:`Options` is the one definition: the WSGI middleware, the Flask extension and the Django
middleware take exactly these keyword arguments (typed through it), :class:`~tidegate._policy.
Policy` validates them, and each framework's configuration keys are derived from the names:

- Flask: ``app.config["TIDEGATE_<NAME>"]`` (see :data:`FLASK_CONFIG_KEYS`; the README lists
  every key);
- Django: ``settings.TIDEGATE = {"<name>": ...}``.

What each option means is documented on :class:`tidegate.wsgi.TideGateMiddleware`;
``gate_websockets`` only on :class:`tidegate.asgi.TideGateMiddleware` (the other adapters
serve no websockets and only check its type).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Union

if TYPE_CHECKING:
    from tidegate._tidegate import AdaptiveGate, CapacityGate, MaintenanceSwitch
    from tidegate.health import HealthChecks
    from tidegate.responses import ErrorPages

__all__ = [
    "DEFAULTS",
    "FLASK_CONFIG_KEYS",
    "OPTION_NAMES",
    "MaintenanceOption",
    "Options",
    "signature_with_options",
    "unknown_option",
]

#: ``maintenance=``: a switch, a state-file path, ``None`` for the default switch of this
#: process (it follows ``MAINTENANCE_MODE`` too), or ``False`` for none.
MaintenanceOption = Union["MaintenanceSwitch", str, "os.PathLike[str]", Literal[False], None]


class Options(TypedDict, total=False):
    """The options, by name and type. Defaults are in :data:`DEFAULTS`."""

    limit: int | Literal["auto"] | None
    gate: CapacityGate | AdaptiveGate | None
    maintenance: MaintenanceOption
    exempt_paths: Iterable[str] | None
    health: HealthChecks | None
    health_path: str
    live_path: str
    retry_after: int
    retry_jitter: int
    pages: ErrorPages | None
    messages: Mapping[str, str] | None
    template: str | None
    status_url: str | None
    bypass_networks: Iterable[str]
    trusted_proxies: int
    bypass_header: str | None
    bypass_token: str | None
    metrics_path: str | None
    metrics: bool | None
    gate_websockets: bool
    max_queue_time: float | None
    priority: Callable[[Any], str] | None
    priority_shares: Mapping[str, float] | None
    priority_header: str | None


#: Each option's value when it is not given (checked against :class:`Options` by mypy).
DEFAULTS: Options = {
    "limit": None,
    "gate": None,
    "maintenance": None,
    "exempt_paths": None,
    "health": None,
    "health_path": "/health",
    "live_path": "/health/live",
    "retry_after": 1,
    "retry_jitter": 0,
    "pages": None,
    "messages": None,
    "template": None,
    "status_url": None,
    "bypass_networks": (),
    "trusted_proxies": 0,
    "bypass_header": None,
    "bypass_token": None,
    "metrics_path": None,
    "metrics": None,
    "gate_websockets": False,
    "max_queue_time": None,
    "priority": None,
    "priority_shares": None,
    "priority_header": None,
}

#: The option names, in the order the documentation gives them.
OPTION_NAMES: tuple[str, ...] = tuple(Options.__annotations__)

if set(OPTION_NAMES) != set(DEFAULTS):  # pragma: no cover - a mistake in this file
    raise ImportError("tidegate._options: every option needs exactly one default")

#: ``app.config`` key for each option: ``TIDEGATE_`` and the name in capitals.
FLASK_CONFIG_KEYS: Mapping[str, str] = {name: f"TIDEGATE_{name.upper()}" for name in OPTION_NAMES}


def unknown_option(owner: str, given: Iterable[str]) -> TypeError | None:
    """The error for the first name in ``given`` that is not an option, if any."""
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if not unknown:
        return None
    return TypeError(f"{owner}: unknown option {unknown[0]!r}")


def signature_with_options(leading: list[inspect.Parameter]) -> inspect.Signature:
    """``leading`` parameters followed by every option as keyword-only with its default, for
    ``help()`` and editors: the typed signature mypy sees comes from :class:`Options`."""
    defaults: Mapping[str, Any] = DEFAULTS
    options = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name])
        for name in OPTION_NAMES
    ]
    return inspect.Signature([*leading, *options])
