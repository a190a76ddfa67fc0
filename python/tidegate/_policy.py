"""Options shared by the WSGI middleware and the Flask extension, and the decisions that are
not on the per-request hot path: maintenance bypass, health endpoints, and which 503 to send.

Both adapters build one :class:`Policy` and ask it; neither re-implements what it decides.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import random
import string
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Union

from tidegate._tidegate import CapacityGate, MaintenanceSwitch, process_draining
from tidegate.responses import STATUS, ErrorPages, Rendered, prefers_html

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["DEFAULT_HEALTH_PATHS", "OPTION_NAMES", "MaintenanceOption", "Policy"]

#: Paths never gated nor put in maintenance unless ``exempt_paths`` says otherwise.
DEFAULT_HEALTH_PATHS = ("/health", "/health/live")

logger = logging.getLogger("tidegate")

_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Every option :class:`Policy` takes; the Flask extension reads each from ``TIDEGATE_<NAME>``.
OPTION_NAMES = (
    "limit",
    "gate",
    "maintenance",
    "exempt_paths",
    "health",
    "health_path",
    "live_path",
    "retry_after",
    "retry_jitter",
    "pages",
    "messages",
    "template",
    "status_url",
    "bypass_networks",
    "trusted_proxies",
    "bypass_header",
    "bypass_token",
)


def _whole(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name}: must be {bound}, got {value!r}")
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


def _header_name(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"bypass_header: must be a str, got {value!r}")
    name = value.strip()
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"bypass_header: must be a header name, got {value!r}")
    return name


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
MaintenanceOption = Union[MaintenanceSwitch, str, "os.PathLike[str]", Literal[False], None]


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

    def __init__(
        self,
        *,
        limit: int | None = None,
        gate: CapacityGate | None = None,
        maintenance: MaintenanceOption = None,
        exempt_paths: Iterable[str] | None = None,
        health: Any = None,
        health_path: str = "/health",
        live_path: str = "/health/live",
        retry_after: int = 1,
        retry_jitter: int = 0,
        pages: ErrorPages | None = None,
        messages: Mapping[str, str] | None = None,
        template: str | None = None,
        status_url: str | None = None,
        bypass_networks: Iterable[str] = (),
        trusted_proxies: int = 0,
        bypass_header: str | None = None,
        bypass_token: str | None = None,
    ) -> None:
        if limit is not None and gate is not None:
            raise ValueError("limit: give either limit or gate, not both")
        if gate is not None and not isinstance(gate, CapacityGate):
            raise TypeError(f"gate: must be a CapacityGate, got {gate!r}")
        self.gate = CapacityGate(limit) if limit is not None else gate
        self.retry_after = _whole("retry_after", retry_after, 0, 2**31)
        self.retry_jitter = _whole("retry_jitter", retry_jitter, 0, 300)
        if pages is not None:
            if not isinstance(pages, ErrorPages):
                raise TypeError(f"pages: must be an ErrorPages, got {pages!r}")
            if messages is not None or template is not None or status_url is not None:
                raise ValueError("pages: give either pages or messages/template/status_url")
            self.pages = pages
        else:
            self.pages = ErrorPages(messages=messages, template=template, status_url=status_url)
        self.maintenance = _maintenance(maintenance)
        self.health = _health(health)
        self.health_path = _path("health_path", health_path)
        self.live_path = _path("live_path", live_path)
        self.exempt_paths = (
            (self.health_path, self.live_path)
            if exempt_paths is None
            else _paths("exempt_paths", exempt_paths)
        )
        self.bypass_networks = _networks(bypass_networks)
        self.trusted_proxies = _whole("trusted_proxies", trusted_proxies, 0, 64)
        if (bypass_header is None) != (bypass_token is None):
            raise ValueError("bypass_header: give both bypass_header and bypass_token, or neither")
        self._bypass_key: str | None = None
        self._bypass_token: bytes | None = None
        if bypass_header is not None:
            self._bypass_key = "HTTP_" + _header_name(bypass_header).upper().replace("-", "_")
            self._bypass_token = _secret(bypass_token)
        # Rendered once: shedding must cost less than serving.
        self._overload = [
            (
                self.pages.render("overload", retry_after=seconds),
                self.pages.render("overload", retry_after=seconds, html_page=True),
            )
            for seconds in range(self.retry_after, self.retry_after + self.retry_jitter + 1)
        ]

    # -- what the hot path needs prepared ----------------------------------------------

    def overload_variants(
        self,
    ) -> list[tuple[list[tuple[str, str]], bytes, list[tuple[str, str]], bytes]]:
        """The overload 503 for every Retry-After the jitter can pick, as JSON and as HTML."""
        return [
            (as_json.headers, as_json.body, as_html.headers, as_html.body)
            for as_json, as_html in self._overload
        ]

    # -- decisions ---------------------------------------------------------------------

    def render(
        self, environ: WSGIEnvironment, reason: str, *, retry_after: int, **details: Any
    ) -> Rendered:
        """The 503 for ``reason``, as HTML when the request's ``Accept`` prefers it."""
        accept = environ.get("HTTP_ACCEPT")
        as_html = isinstance(accept, str) and prefers_html(accept)
        return self.pages.render(reason, retry_after=retry_after, html_page=as_html, **details)

    def overload(self, environ: WSGIEnvironment) -> Rendered:
        """The overload 503, with a Retry-After picked from the jitter range."""
        as_json, as_html = random.choice(self._overload)
        accept = environ.get("HTTP_ACCEPT")
        return as_html if isinstance(accept, str) and prefers_html(accept) else as_json

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

    def health_response(self, path: str) -> Rendered | None:
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
        headers.append(("Retry-After", str(retry if isinstance(retry, int) else 1)))
        return Rendered(STATUS, headers, body)

    def bypassed(self, environ: WSGIEnvironment) -> bool:
        """Whether this request may pass through maintenance."""
        if self._bypass_key is not None and self._bypass_token is not None:
            offered = environ.get(self._bypass_key)
            # surrogatepass: any str encodes, so no header value can raise here.
            if isinstance(offered, str) and hmac.compare_digest(
                offered.encode("utf-8", "surrogatepass"), self._bypass_token
            ):
                return True
        if self.bypass_networks:
            address = self.client_address(environ)
            if address is not None and any(address in net for net in self.bypass_networks):
                return True
        return False

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
