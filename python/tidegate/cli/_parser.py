"""The ``tidegate`` command line: its commands, options and help."""

from __future__ import annotations

import argparse
import textwrap
from typing import NoReturn

from tidegate.cli._errors import PROG, UsageError
from tidegate.cli._maintenance import (
    run_drain,
    run_maintenance_off,
    run_maintenance_on,
    run_maintenance_status,
)
from tidegate.cli._page import DEFAULT_PAGE_RETRY_AFTER, run_page
from tidegate.cli._state import STATE_ENV
from tidegate.cli._values import duration_arg, seconds_arg, until_arg, url_arg


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def run_demo(args: argparse.Namespace) -> int:
    from tidegate.demo import run

    return run(json_output=args.json, asgi=args.asgi)


class _Formatter(argparse.HelpFormatter):
    """Wraps prose to the terminal; keeps indented lines (examples) and headings as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        prose: list[str] = []

        def flush() -> None:
            if prose:
                out.extend(
                    textwrap.wrap(
                        " ".join(prose), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
                prose.clear()

        for line in text.splitlines():
            if not line.strip() or line.startswith(" ") or line.endswith(":"):
                flush()
                out.append(indent + line if line.strip() else "")
            else:
                prose.append(line.strip())
        flush()
        return "\n".join(out)


_MAIN_EPILOG = """\
examples:
  tidegate maintenance on --state /run/app/tidegate.json --message "Upgrading" --for 30m
  tidegate maintenance status --state /run/app/tidegate.json
  tidegate maintenance off --state /run/app/tidegate.json
  tidegate drain --state /run/app/tidegate.json     # before stopping a node
  tidegate page --message "Back soon" --output /var/www/maintenance.html
  tidegate demo                                     # every kind of 503 in a few seconds
  tidegate demo --asgi                              # the same, over ASGI

The app reads the same file: MaintenanceSwitch("/run/app/tidegate.json"), or
TideGateMiddleware(app, maintenance="/run/app/tidegate.json"). --state may also come from
the TIDEGATE_STATE_FILE environment variable.
"""

_ON_EPILOG = """\
examples:
  tidegate maintenance on --state /run/app/tidegate.json
  tidegate maintenance on --state /run/app/tidegate.json --message "Upgrading the DB" --for 1h30m
  tidegate maintenance on --state /run/app/tidegate.json --until 2030-01-01T12:00:00Z

Durations: 90s, 15m, 2h, 1h30m, 1d (or bare seconds). --until is ISO-8601; no offset means
UTC. While --until is ahead, Retry-After counts down to it; --retry-after is used otherwise.
"""

_DRAIN_EPILOG = """\
examples:
  tidegate drain --state /run/app/tidegate.json        # readiness fails, requests served
  tidegate drain --state /run/app/tidegate.json --off  # back in rotation

Draining makes /health answer 503 "draining" in every worker so the load balancer stops
sending new work, while requests that still arrive are served. Use it before a restart.
"""

_PAGE_EPILOG = """\
examples:
  tidegate page --message "Back at 14:00 UTC" --until 2030-01-01T14:00:00Z --output maintenance.html
  tidegate page --state /run/app/tidegate.json --status-url https://status.example.com > page.html

Writes the same HTML page the app serves during maintenance, self-contained (no external
assets), for a reverse proxy to serve while the app itself is down. With --state the message
and end time come from the state file unless given here.
"""


def _state_option(parser: argparse.ArgumentParser, *, required_help: str) -> None:
    parser.add_argument(
        "--state",
        metavar="PATH|URI",
        help="the JSON state file every worker polls, or a redis:// or unix:// store URI "
        f"shared by a fleet ({required_help})",
    )


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Answer 503 Service Unavailable the right way: switch maintenance and "
        "drain for every worker, write the static maintenance page, or watch the demo.",
        epilog=_MAIN_EPILOG,
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    maintenance = commands.add_parser(
        "maintenance",
        help="turn maintenance mode on or off, or show it",
        description="Turn maintenance mode on or off for every worker, or show it.",
        epilog=_MAIN_EPILOG,
        formatter_class=_Formatter,
    )
    actions = maintenance.add_subparsers(dest="action", metavar="ACTION")

    on = actions.add_parser(
        "on",
        help="requests get 503 maintenance with Retry-After",
        description="Put every worker into maintenance: requests get the maintenance 503 "
        "(JSON, or the HTML page for browsers) with Retry-After; /health stays 200.",
        epilog=_ON_EPILOG,
        formatter_class=_Formatter,
    )
    _state_option(on, required_help=f"required unless {STATE_ENV} is set")
    on.add_argument("--message", metavar="TEXT", help="what users are told")
    ends = on.add_mutually_exclusive_group()
    ends.add_argument(
        "--for",
        dest="for_",
        type=duration_arg,
        metavar="DURATION",
        help="estimated length, e.g. 30m or 1h30m",
    )
    ends.add_argument(
        "--until", type=until_arg, metavar="ISO", help="estimated end, e.g. 2030-01-01T12:00Z"
    )
    on.add_argument(
        "--retry-after",
        type=seconds_arg,
        metavar="DURATION",
        help="Retry-After when no end is known (default: the app's default_retry_after)",
    )
    on.set_defaults(handler=run_maintenance_on)

    off = actions.add_parser(
        "off",
        help="serve requests again",
        description="Take every worker out of maintenance.",
        formatter_class=_Formatter,
    )
    _state_option(off, required_help=f"required unless {STATE_ENV} is set")
    off.set_defaults(handler=run_maintenance_off)

    status = actions.add_parser(
        "status",
        help="show maintenance and drain",
        description="Show what the state file says: maintenance, its message, end and "
        "Retry-After, and drain. Exit code 1 if the file cannot be read.",
        formatter_class=_Formatter,
    )
    _state_option(status, required_help=f"required unless {STATE_ENV} is set")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=run_maintenance_status)

    drain = commands.add_parser(
        "drain",
        help="make readiness fail while requests are still served",
        description="Drain every worker: readiness (/health) answers 503 draining so the load "
        "balancer stops routing here, while requests in flight and still arriving are served.",
        epilog=_DRAIN_EPILOG,
        formatter_class=_Formatter,
    )
    _state_option(drain, required_help=f"required unless {STATE_ENV} is set")
    drain.add_argument("--off", action="store_true", help="stop draining")
    drain.set_defaults(handler=run_drain)

    page = commands.add_parser(
        "page",
        help="write the static maintenance page for a reverse proxy",
        description="Write the maintenance page (HTML) to stdout or --output, atomically.",
        epilog=_PAGE_EPILOG,
        formatter_class=_Formatter,
    )
    page.add_argument("--message", metavar="TEXT", help="what users are told")
    page_ends = page.add_mutually_exclusive_group()
    page_ends.add_argument(
        "--for", dest="for_", type=duration_arg, metavar="DURATION", help="estimated length"
    )
    page_ends.add_argument("--until", type=until_arg, metavar="ISO", help="estimated end")
    page.add_argument(
        "--retry-after",
        type=seconds_arg,
        metavar="DURATION",
        help=f"the page's retry hint when no end is known (default {DEFAULT_PAGE_RETRY_AFTER}s)",
    )
    page.add_argument("--status-url", type=url_arg, metavar="URL", help="link to a status page")
    page.add_argument("--template", metavar="FILE", help="a replacement page template")
    _state_option(page, required_help="optional: take the message and end from it")
    page.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    page.set_defaults(handler=run_page)

    demo = commands.add_parser(
        "demo",
        help="serve a small app and show every kind of 503 clients see",
        description="Serve a small app on 127.0.0.1, send real HTTP clients at it (normal "
        "load, overload, maintenance, a dependency down, drain) and print what they saw.",
        formatter_class=_Formatter,
    )
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    demo.add_argument(
        "--asgi",
        action="store_true",
        help="serve the app over ASGI, behind tidegate.asgi.TideGateMiddleware (by Uvicorn "
        "if installed, else by a minimal asyncio server)",
    )
    demo.set_defaults(handler=run_demo)

    parser.set_defaults(handler=None)
    maintenance.set_defaults(handler=None)
    return parser
