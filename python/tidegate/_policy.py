"""The options, validated, and what the one decision (``tidegate._tidegate``'s decision core)
asks Python for: the maintenance bypass and the maintenance 503, the health answers, the
dependency 503, and the overload 503 rendered ahead of time.

Every adapter builds one :class:`Policy` from its options and hands the decision core what
:meth:`Policy.core_config` gives; no adapter decides anything itself.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import math
import os
import string
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tidegate._options import DEFAULTS, OPTION_NAMES, MaintenanceOption, Options, unknown_option
from tidegate._tidegate import (
    MAX_QUEUE_TIME,
    PRIORITY_CRITICAL,
    PRIORITY_DEFAULT,
    PRIORITY_SHEDDABLE,
    AdaptiveGate,
    CapacityGate,
    MaintenanceSwitch,
    process_draining,
)
from tidegate.metrics import render as metrics_render
from tidegate.responses import STATUS, ErrorPages, Rendered, prefers_html

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_HEALTH_PATHS",
    "DEFAULT_PRIORITY_SHARES",
    "LEVELS",
    "OPTION_NAMES",
    "MaintenanceOption",
    "Policy",
    "PolicyParts",
]

#: Paths never gated nor put in maintenance unless ``exempt_paths`` says otherwise.
DEFAULT_HEALTH_PATHS = ("/health", "/health/live")

logger = logging.getLogger("tidegate")

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


#: The priority levels, as the decision core numbers them.
LEVELS = {"critical": 0, "default": 1, "sheddable": 2}

#: A view's priority as the decision core's ``exempt`` flags carry it, by level.
_PRIORITY_FLAGS = {
    "critical": PRIORITY_CRITICAL,
    "default": PRIORITY_DEFAULT,
    "sheddable": PRIORITY_SHEDDABLE,
}
#: Every priority flag.
PRIORITY_MASK = PRIORITY_CRITICAL | PRIORITY_DEFAULT | PRIORITY_SHEDDABLE


def priority_flag(level: object) -> int:
    """The flag of a view decorator's ``level``; a ``TypeError``/``ValueError`` naming
    ``priority`` for anything else."""
    if not isinstance(level, str):
        raise TypeError(f"priority: must be 'critical', 'default' or 'sheddable', got {level!r}")
    flag = _PRIORITY_FLAGS.get(level)
    if flag is None:
        raise ValueError(f"priority: must be 'critical', 'default' or 'sheddable', got {level!r}")
    return flag


#: How much of the limit each level may fill while priorities are in use: a sheddable request
#: is refused once half the limit is busy, a default one at 90 %, a critical one only when the
#: whole limit is.
DEFAULT_PRIORITY_SHARES = {"critical": 1.0, "default": 0.9, "sheddable": 0.5}


def _whole(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name}: must be {bound}, got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: must be a bool, got {value!r}")
    return value


def _path(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: must be a str, got {value!r}")
    if not value.startswith("/"):
        raise ValueError(f"{name}: must be a path starting with '/', got {value!r}")
    return value


def _paths(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: must be an iterable of paths, got {value!r}")
    return tuple(_path(name, item) for item in value)


def _networks(value: object) -> tuple[_Network, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"bypass_networks: must be an iterable of networks, got {value!r}")
    networks = []
    for item in value:
        # ipaddress also takes ints and packed bytes as addresses; here they are mistakes.
        if not isinstance(item, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise TypeError(f"bypass_networks: must hold networks as str, got {item!r}")
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            raise ValueError(f"bypass_networks: not an IP network: {item!r}") from None
    return tuple(networks)


#: The characters of an RFC 9110 token, which a field name is.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)


def _header_name(value: object, option: str = "bypass_header") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{option}: must be a str, got {value!r}")
    name = value.strip()
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"{option}: must be a header name, got {value!r}")
    return name


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _gate(limit: object, gate: object) -> CapacityGate | AdaptiveGate | None:
    if limit is not None and gate is not None:
        raise ValueError("limit: give either limit or gate, not both")
    if gate is not None:
        if not isinstance(gate, (CapacityGate, AdaptiveGate)):
            raise TypeError(f"gate: must be a CapacityGate or an AdaptiveGate, got {gate!r}")
        return gate
    if limit is None:
        return None
    if isinstance(limit, str):
        if limit != "auto":
            raise TypeError(f"limit: must be an int or 'auto', got {limit!r}")
        return AdaptiveGate()
    return CapacityGate(limit)  # type: ignore[arg-type]


def _queue_time(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"max_queue_time: must be a number of seconds or None, got {value!r}")
    if not (math.isfinite(value) and 0 < value <= MAX_QUEUE_TIME):
        raise ValueError(
            f"max_queue_time: must be seconds > 0 and at most {MAX_QUEUE_TIME:g}, got {value!r}"
        )
    return float(value)


def _shares(value: object) -> tuple[float, float, float]:
    shares = dict(DEFAULT_PRIORITY_SHARES)
    if value is not None:
        if not isinstance(value, Mapping):
            raise TypeError(
                "priority_shares: must be a dict of level -> fraction of the limit, such as "
                f'{{"sheddable": 0.5}}, got {value!r}'
            )
        for level, share in value.items():
            if level not in LEVELS:
                raise ValueError(
                    "priority_shares: levels are 'critical', 'default' and 'sheddable', "
                    f"got {level!r}"
                )
            if isinstance(share, bool) or not isinstance(share, (int, float)):
                raise TypeError(f"priority_shares: {level} must be a number, got {share!r}")
            if not (math.isfinite(share) and 0 < share <= 1):
                raise ValueError(
                    f"priority_shares: {level} must be a fraction in (0, 1], got {share!r}"
                )
            shares[level] = float(share)
    ordered = (shares["critical"], shares["default"], shares["sheddable"])
    if not ordered[0] >= ordered[1] >= ordered[2]:
        raise ValueError(
            "priority_shares: must not give a lower level more of the limit than a higher one, "
            f"got {shares!r}"
        )
    return ordered


def _secret(value: object) -> bytes:
    # Never repeats the value: even a rejected token may be a real secret.
    if not isinstance(value, str):
        raise TypeError(f"bypass_token: must be a str, got {type(value).__name__}")
    if len(value) < 16:
        raise ValueError("bypass_token: must be a str of at least 16 characters")
    # A server hands header values over as bytes decoded as latin-1 (PEP 3333), so only
    # visible ASCII means the same thing on both sides.
    if not all("!" <= char <= "~" for char in value):
        raise ValueError("bypass_token: must be visible ASCII characters only (no spaces)")
    return value.encode("ascii")


#: What ``maintenance`` takes: a switch, a state-file path, ``None`` for the default switch
#: (this process plus ``MAINTENANCE_MODE``) or ``False`` for no switch at all.


def _maintenance(value: object) -> MaintenanceSwitch | None:
    if value is None:
        # The default answers to MAINTENANCE_MODE and to the pytest fixtures, as users expect.
        return MaintenanceSwitch()
    # False itself only: 0 is a mistake, not "no switch", and True is no switch either.
    if value is False:
        return None
    if isinstance(value, MaintenanceSwitch):
        return value
    if isinstance(value, (str, os.PathLike)):
        try:
            return MaintenanceSwitch(value)
        except ValueError as exc:
            raise ValueError(f"maintenance: {exc}") from None
    raise TypeError(
        "maintenance: must be a MaintenanceSwitch, a state-file path, None (the default "
        f"switch) or False (no switch), got {value!r}"
    )


def _health(value: object) -> Any:
    if value is not None and not (
        callable(getattr(value, "readiness", None)) and callable(getattr(value, "liveness", None))
    ):
        raise TypeError(f"health: must be a HealthChecks, got {value!r}")
    return value


def _unanswerable(readiness: bool) -> dict[str, object]:
    """The body of a health answer whose checks could not be asked: the usual shape, failed."""
    if not readiness:
        return {"status": "unavailable"}
    return {
        "status": "unavailable",
        "reason": "check_failed",
        "maintenance": False,
        "draining": process_draining(),
        "retry_after": 1,
        "checks": {},
        "breakers": {},
    }


class Policy:
    """Validated options plus the decisions made off the hot path. See
    :class:`tidegate.wsgi.TideGateMiddleware` for what each option means."""

    def __init__(self, owner: str = "Policy", /, **given: Unpack[Options]) -> None:
        error = unknown_option(owner, given)
        if error is not None:
            raise error
        options: Options = {**DEFAULTS, **given}
        limit = options["limit"]
        gate = options["gate"]
        messages, template = options["messages"], options["template"]
        status_url, pages = options["status_url"], options["pages"]
        bypass_header, bypass_token = options["bypass_header"], options["bypass_token"]
        self.gate = _gate(limit, gate)
        self.retry_after = _whole("retry_after", options["retry_after"], 0, 2**31)
        self.retry_jitter = _whole("retry_jitter", options["retry_jitter"], 0, 300)
        if pages is not None:
            if not isinstance(pages, ErrorPages):
                raise TypeError(f"pages: must be an ErrorPages, got {pages!r}")
            if messages is not None or template is not None or status_url is not None:
                raise ValueError("pages: give either pages or messages/template/status_url")
            self.pages = pages
        else:
            self.pages = ErrorPages(messages=messages, template=template, status_url=status_url)
        self.maintenance = _maintenance(options["maintenance"])
        self.health = _health(options["health"])
        self.health_path = _path("health_path", options["health_path"])
        self.live_path = _path("live_path", options["live_path"])
        metrics_path = options["metrics_path"]
        self.metrics_path = None if metrics_path is None else _path("metrics_path", metrics_path)
        if self.metrics_path is not None and self.metrics_path in (
            self.health_path,
            self.live_path,
        ):
            raise ValueError(
                f"metrics_path: {self.metrics_path!r} is already the health_path or live_path"
            )
        metrics = options["metrics"]
        if metrics is not None and not isinstance(metrics, bool):
            raise TypeError(f"metrics: must be True, False or None, got {metrics!r}")
        if self.metrics_path is not None:
            if metrics is False:
                raise ValueError("metrics_path: serving metrics needs metrics=True or None")
            metrics = True
        self.metrics: bool | None = metrics
        exempt_paths = options["exempt_paths"]
        self.exempt_paths = (
            (self.health_path, self.live_path)
            if exempt_paths is None
            else _paths("exempt_paths", exempt_paths)
        )
        self.bypass_networks = _networks(options["bypass_networks"])
        self.gate_websockets = _flag("gate_websockets", options["gate_websockets"])
        self.trusted_proxies = _whole("trusted_proxies", options["trusted_proxies"], 0, 64)
        if (bypass_header is None) != (bypass_token is None):
            raise ValueError("bypass_header: give both bypass_header and bypass_token, or neither")
        self._bypass_key: str | None = None
        self._bypass_token: bytes | None = None
        if bypass_header is not None:
            self._bypass_key = _environ_key(_header_name(bypass_header))
            self._bypass_token = _secret(bypass_token)
        self.max_queue_time = _queue_time(options["max_queue_time"])
        priority = options["priority"]
        if priority is not None and not callable(priority):
            raise TypeError(
                f"priority: must be a callable of the request or None, got {priority!r}"
            )
        self.priority = priority
        self.priority_shares = _shares(options["priority_shares"])
        priority_header = options["priority_header"]
        self._priority_key: str | None = None
        if priority_header is not None:
            self._priority_key = _environ_key(_header_name(priority_header, "priority_header"))
        #: Shares apply from the start when priorities are configured (a marked view turns
        #: them on when it is first asked for).
        self.priorities = (
            priority is not None
            or priority_header is not None
            or options["priority_shares"] is not None
        )
        self._priority_failed = False
        # Rendered once: shedding must cost less than serving.
        self._overload = [
            (
                self.pages.render("overload", retry_after=seconds),
                self.pages.render("overload", retry_after=seconds, html_page=True),
            )
            for seconds in range(self.retry_after, self.retry_after + self.retry_jitter + 1)
        ]

    # -- what the decision core is configured with ---------------------------------------

    def core_config(
        self, request_of: Callable[[WSGIEnvironment], object] | None = None
    ) -> dict[str, Any]:
        """The decision core's configuration: the gate and switch, the routes of ours (health
        answers; ``None`` for a path that is only exempt), the renderer's callbacks, queue time
        and priorities. ``request_of`` gives the ``priority`` callable its argument (the
        framework's request) from the environ; by default the environ itself."""
        routes: dict[str, Any] = dict.fromkeys(self.exempt_paths)
        if self.health is not None:
            routes[self.health_path] = self.health_response
            routes[self.live_path] = self.health_response
        if self.metrics_path is not None:
            routes[self.metrics_path] = self.metrics_response
        return {
            "gate": self.gate,
            "maintenance": self.maintenance,
            "routes": routes,
            "on_maintenance": self.maintenance_response,
            "on_dependency": self.dependency_response,
            "overload": self._overload,
            "metrics": self.metrics,
            "max_queue_time": self.max_queue_time,
            "priority": (
                functools.partial(self.priority_level, request_of or _same)
                if self.priority is not None or self._priority_key is not None
                else None
            ),
            "priority_shares": self.priority_shares,
            "priorities": self.priorities,
        }

    # -- what the decision asks --------------------------------------------------------

    def render(
        self, environ: WSGIEnvironment, reason: str, *, retry_after: int, **details: Any
    ) -> Rendered:
        """The 503 for ``reason``, as HTML when the request's ``Accept`` prefers it."""
        accept = environ.get("HTTP_ACCEPT")
        as_html = isinstance(accept, str) and prefers_html(accept)
        return self.pages.render(reason, retry_after=retry_after, html_page=as_html, **details)

    def maintenance_response(self, environ: WSGIEnvironment) -> Rendered | None:
        """The maintenance 503, or ``None`` when maintenance is off or this request bypasses it."""
        if self.maintenance is None or self.bypassed(environ):
            return None
        status = self.maintenance.status()
        if not status.active:
            return None
        return self.render(
            environ,
            "maintenance",
            retry_after=status.retry_after.delay(),
            message=status.message,
            estimated_return=status.until,
        )

    def dependency_response(self, environ: WSGIEnvironment, error: BaseException) -> Rendered:
        """The 503 for an open circuit: Retry-After is the time left until its next probe."""
        wait = getattr(error, "retry_after", None)
        seconds = self.retry_after
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and math.isfinite(wait):
            seconds = max(1, min(math.ceil(wait), 2**31))
        return self.render(environ, "dependency", retry_after=seconds)

    def metrics_response(self, path: str, environ: WSGIEnvironment) -> Rendered:
        """The scrape at ``metrics_path``: Prometheus text, or OpenMetrics when the scraper's
        ``Accept`` asks for it; this process's numbers, or the whole server's when the worker
        records into a shared file. A scrape that fails is a 503 and a logged error."""
        accept = environ.get("HTTP_ACCEPT")
        try:
            content_type, body = metrics_render(accept if isinstance(accept, str) else None)
        except Exception:
            logger.exception("%s could not be answered; answering 503", path)
            body = b"metrics unavailable\n"
            headers = [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("Retry-After", "1"),
            ]
            return Rendered(STATUS, headers, body, retry_after=1)
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        return Rendered("200 OK", headers, body)

    def health_response(self, path: str, environ: WSGIEnvironment | None = None) -> Rendered | None:
        """The readiness or liveness answer for ``path``, or ``None`` for other paths.

        Always an answer: should the checks object raise or return a body JSON cannot hold,
        the error is logged and readiness is a 503 with reason ``check_failed``.
        """
        if self.health is None:
            return None
        if path == self.health_path:
            readiness = True
        elif path == self.live_path:
            readiness = False
        else:
            return None
        try:
            if readiness:
                code, document = self.health.readiness(self.maintenance)
            else:
                code, document = self.health.liveness()
            body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except Exception:
            logger.exception("%s could not be answered; answering 503", path)
            code, document = 503, _unanswerable(readiness)
            body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        if code == 200:
            return Rendered("200 OK", headers, body)
        retry = document.get("retry_after") if isinstance(document, dict) else None
        seconds = retry if isinstance(retry, int) and not isinstance(retry, bool) else 1
        headers.append(("Retry-After", str(seconds)))
        return Rendered(STATUS, headers, body, retry_after=seconds)

    def priority_level(
        self, request_of: Callable[[WSGIEnvironment], object], environ: WSGIEnvironment
    ) -> int:
        """The request's level (see :data:`LEVELS`): the priority header's when it is set and
        comes from a trusted proxy or a bypass network, else what the ``priority`` callable
        says; ``default`` for anything else, an error of the callable's included (logged
        once)."""
        if self._priority_key is not None:
            offered = environ.get(self._priority_key)
            level = LEVELS.get(offered.strip().lower()) if isinstance(offered, str) else None
            # Who sent it is asked only of a header that names a level: a cheap look first.
            if level is not None and (self.trusted_proxies > 0 or self.in_bypass_network(environ)):
                return level
        if self.priority is None:
            return 1
        try:
            named = self.priority(request_of(environ))
        except Exception:
            if not self._priority_failed:
                self._priority_failed = True
                logger.exception("priority: the callable raised; such requests count as default")
            return 1
        return LEVELS.get(named, 1) if isinstance(named, str) else 1

    def in_bypass_network(self, environ: WSGIEnvironment) -> bool:
        """Whether the client address is in ``bypass_networks``."""
        if not self.bypass_networks:
            return False
        address = self.client_address(environ)
        return address is not None and any(address in net for net in self.bypass_networks)

    def bypassed(self, environ: WSGIEnvironment) -> bool:
        """Whether this request may pass through maintenance."""
        if self._bypass_key is not None and self._bypass_token is not None:
            offered = environ.get(self._bypass_key)
            # surrogatepass: any str encodes, so no header value can raise here.
            if isinstance(offered, str) and hmac.compare_digest(
                offered.encode("utf-8", "surrogatepass"), self._bypass_token
            ):
                return True
        return self.in_bypass_network(environ)

    def client_address(self, environ: WSGIEnvironment) -> _Address | None:
        """The peer address, or with ``trusted_proxies`` = N the address N hops back in
        ``X-Forwarded-For`` (the one the outermost trusted proxy saw). A header shorter than
        N entries is not trusted at all."""
        candidate = environ.get("REMOTE_ADDR")
        if self.trusted_proxies:
            forwarded = environ.get("HTTP_X_FORWARDED_FOR")
            if isinstance(forwarded, str):
                hops = [hop.strip() for hop in forwarded.split(",")]
                if len(hops) >= self.trusted_proxies:
                    candidate = hops[-self.trusted_proxies]
        if not isinstance(candidate, str):
            return None
        try:
            address = ipaddress.ip_address(candidate.split("%", 1)[0])
        except ValueError:
            return None
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; IPv4 networks must match.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address


def _same(environ: WSGIEnvironment) -> object:
    return environ


class PolicyParts:
    """The parts every adapter shows its users, read off its :class:`Policy`."""

    policy: Policy

    @property
    def gate(self) -> Any:
        """The :class:`~tidegate.CapacityGate` or :class:`~tidegate.AdaptiveGate` in use, or
        ``None``."""
        return self.policy.gate

    @property
    def maintenance(self) -> Any:
        """The :class:`~tidegate.MaintenanceSwitch` (``None`` with ``maintenance=False``)."""
        return self.policy.maintenance
