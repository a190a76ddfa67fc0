"""The one place a 503 is rendered: JSON by default, an HTML page for browsers, no body for HEAD.

Every part of tidegate (the WSGI middleware, the Flask extension, the CLI's static page) asks
:class:`ErrorPages` for its 503, so they all say it the same way.
"""

from __future__ import annotations

import html
import json
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from tidegate._tidegate import _format_iso, prefers_html

__all__ = [
    "DEFAULT_MESSAGES",
    "DEFAULT_TEMPLATE",
    "REASONS",
    "ErrorPages",
    "Rendered",
    "prefers_html",
    "status_url_problem",
]

Reason = Literal["overload", "maintenance", "dependency", "draining"]
REASONS: tuple[Reason, ...] = ("overload", "maintenance", "dependency", "draining")

STATUS = "503 Service Unavailable"

DEFAULT_MESSAGES: Mapping[str, str] = {
    "overload": "The server is busy right now. Please try again shortly.",
    "maintenance": "We are down for scheduled maintenance and will be back soon.",
    "dependency": "A service this page depends on is unavailable. Please try again shortly.",
    "draining": "This server is restarting. Please try again in a moment.",
}

_TITLES: Mapping[str, str] = {
    "overload": "Busy right now",
    "maintenance": "Down for maintenance",
    "dependency": "Temporarily unavailable",
    "draining": "Restarting",
}

#: The built-in page. A replacement may use the same ``$placeholders``; every value is
#: HTML-escaped before it is substituted.
DEFAULT_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>$title</title>
<style>
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f5f7fa;color:#1f2933}
main{max-width:34rem;margin:1.5rem;padding:2rem 2.25rem;background:#fff;border-radius:12px;
box-shadow:0 2px 12px rgba(0,0,0,.08)}
h1{margin:0 0 .75rem;font-size:1.5rem}
p{margin:.5rem 0}
.muted{color:#616e7c;font-size:.9rem}
a{color:#0b69a3}
</style>
</head>
<body>
<main>
<h1>$title</h1>
<p>$message</p>
$estimated_return_html
$status_link_html
<p class="muted">503 Service Unavailable &middot; retry after $retry_after s</p>
</main>
</body>
</html>
"""


@dataclass(frozen=True)
class Rendered:
    """A finished answer: status line, headers (``Content-Length`` included) and body. A 503
    also says why (``reason``) and when to come back (``retry_after``, the seconds its
    ``Retry-After`` header says), so nobody reads them back out of the headers."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes
    reason: str | None = None
    retry_after: int | None = None

    @property
    def status_code(self) -> int:
        """The status as a number (``503``)."""
        return int(self.status.partition(" ")[0])

    @property
    def reason_phrase(self) -> str:
        """The status line's words (``Service Unavailable``)."""
        return self.status.partition(" ")[2]


def iso_utc(value: datetime | None) -> str | None:
    """``value`` as an ISO-8601 UTC string (``...Z``); a naive datetime is UTC."""
    return None if value is None else _format_iso(value)


def status_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a status link, or ``None`` when it can.

    A status link is an ``http`` or ``https`` URL with a host (the scheme in any case), or a
    path on this site: one ``/`` followed by anything but another ``/``. Escaping cannot make
    a ``javascript:`` or ``data:`` link harmless, and ``//host`` is a link to another host.
    Browsers also read ``\\`` as ``/`` and drop tabs and newlines (``/\\evil.example`` and
    ``/<tab>/evil.example`` both mean ``//evil.example``), so no backslash, space or control
    character is accepted anywhere. The API (``status_url=``) and the ``tidegate page
    --status-url`` option both ask this function.
    """
    odd = next((c for c in url if c in " \\" or unicodedata.category(c) == "Cc"), None)
    if odd is not None:
        return (
            "must not hold spaces, backslashes or control characters (browsers read them as "
            f"another link), got {url!r}"
        )
    if url.startswith("/"):
        if url.startswith("//"):
            return f"must not start with '//', a link to another host, got {url!r}"
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme.lower() not in ("http", "https")
        or not url[len(parts.scheme) :].startswith("://")
        or not parts.hostname
    ):
        return (
            "must be an http(s) URL with a host or a path on this site starting with one '/', "
            f"got {url!r}"
        )
    return None


class ErrorPages:
    """Renders tidegate's 503 responses.

    ``messages`` overrides the default message per reason; ``template`` replaces the HTML page
    (a :class:`string.Template` with ``$title``, ``$message``, ``$reason``, ``$retry_after``,
    ``$estimated_return``, ``$estimated_return_html``, ``$status_url`` and
    ``$status_link_html``); ``status_url`` adds a link to a status page: an http(s) URL with a
    host, or a path on this site (see :func:`status_url_problem`).
    """

    def __init__(
        self,
        *,
        messages: Mapping[str, str] | None = None,
        template: str | None = None,
        status_url: str | None = None,
    ) -> None:
        if messages is not None:
            if not isinstance(messages, Mapping):
                raise TypeError(f"messages: must be a mapping of reason to text, got {messages!r}")
            unknown = sorted(set(messages) - set(REASONS))
            if unknown:
                raise ValueError(
                    f"messages: unknown reason {unknown[0]!r}; expected one of {REASONS}"
                )
            for reason, text in messages.items():
                if not isinstance(text, str):
                    raise TypeError(f"messages: the {reason!r} message must be a str, got {text!r}")
        if template is not None and not isinstance(template, str):
            raise TypeError(f"template: must be a str, got {template!r}")
        if template is not None:
            try:
                string.Template(template).substitute(dict.fromkeys(_PLACEHOLDERS, ""))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"template: bad placeholder ({exc})") from None
        if status_url is not None:
            if not isinstance(status_url, str):
                raise TypeError(f"status_url: must be a str, got {status_url!r}")
            problem = status_url_problem(status_url)
            if problem is not None:
                raise ValueError(f"status_url: {problem}")
        self.messages: dict[str, str] = {**DEFAULT_MESSAGES, **(messages or {})}
        self.template = string.Template(template or DEFAULT_TEMPLATE)
        self.status_url = status_url

    def render(
        self,
        reason: str,
        *,
        retry_after: int,
        html_page: bool = False,
        message: str | None = None,
        estimated_return: datetime | None = None,
    ) -> Rendered:
        """The 503 for ``reason``, as JSON or (``html_page``) as the HTML page."""
        if reason not in REASONS:
            raise ValueError(f"reason: must be one of {REASONS}, got {reason!r}")
        text = message if message is not None else self.messages[reason]
        returning = iso_utc(estimated_return)
        if html_page:
            body = self._page(reason, text, retry_after, returning).encode("utf-8")
            content_type = "text/html; charset=utf-8"
        else:
            document = {
                "error": "Service Unavailable",
                "reason": reason,
                "message": text,
                "retry_after": retry_after,
                "estimated_return": returning,
            }
            body = json.dumps(document, separators=(",", ":")).encode("utf-8")
            content_type = "application/json"
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Retry-After", str(retry_after)),
            ("Cache-Control", "no-store"),
        ]
        return Rendered(STATUS, headers, body, reason, retry_after)

    def _page(self, reason: str, message: str, retry_after: int, returning: str | None) -> str:
        escape = html.escape
        returning_html = (
            f'<p>Expected back by <time datetime="{escape(returning)}">'
            f"{escape(returning.replace('T', ' ').replace('Z', ' UTC'))}</time>.</p>"
            if returning
            else ""
        )
        link_html = (
            f'<p><a href="{escape(self.status_url)}">Current status</a></p>'
            if self.status_url
            else ""
        )
        return self.template.safe_substitute(
            title=escape(_TITLES.get(reason, "Service unavailable")),
            message=escape(message),
            reason=escape(reason),
            retry_after=str(retry_after),
            estimated_return=escape(returning or ""),
            estimated_return_html=returning_html,
            status_url=escape(self.status_url or ""),
            status_link_html=link_html,
        )


_PLACEHOLDERS = (
    "title",
    "message",
    "reason",
    "retry_after",
    "estimated_return",
    "estimated_return_html",
    "status_url",
    "status_link_html",
)
