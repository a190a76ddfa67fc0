"""The ``tidegate`` command: maintenance mode, drain and the static page, for operators.

Every command that changes state writes the JSON state file that each worker's
:class:`~tidegate.MaintenanceSwitch` polls, so all workers on the host follow within their
``poll_interval``. Writes are atomic: a worker sees the old file or the new one, never a mix,
and a command that fails leaves the file as it was.

Exit codes: 0 done, 1 the command could not be carried out (the file could not be written or
read), 2 bad arguments. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import stat
import sys
import textwrap
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn, TextIO

from tidegate._tidegate import MaintenanceStatus, MaintenanceSwitch, _parse_iso, _write_atomic
from tidegate.responses import ErrorPages, iso_utc, status_url_problem

__all__ = ["main", "parse_duration", "parse_until"]

PROG = "tidegate"
#: Where ``--state`` is read from when it is not given.
STATE_ENV = "TIDEGATE_STATE_FILE"
#: Retry-After of a static page when neither ``--until`` nor ``--retry-after`` says more.
DEFAULT_PAGE_RETRY_AFTER = 60

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
_SECONDS = re.compile(r"\d+", re.ASCII)
_DURATION_HINT = "use e.g. 90s, 15m, 2h, 1h30m or 1d"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class UsageError(Exception):
    """Bad arguments: reported on one line, exit code 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class CommandError(Exception):
    """The command could not be carried out: reported on one line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


# -- values --------------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1h30m``, ``1d`` (units in that order) or bare seconds."""
    cleaned = text.strip().lower()
    match = _DURATION.fullmatch(cleaned)
    if _SECONDS.fullmatch(cleaned):
        seconds = int(cleaned)
    elif cleaned and match is not None:
        days, hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    else:
        raise ValueError(f"not a duration: {text!r} ({_DURATION_HINT})")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration too long: {text!r}") from None


def parse_until(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 date and time in the future, as an aware UTC datetime (no offset is UTC).

    The forms are those a state file's ``until`` may hold, plus a bare date (midnight UTC).
    """
    unix = _parse_iso(text)
    if unix is None:
        raise ValueError(f"not an ISO-8601 date and time: {text!r} (e.g. 2030-01-01T12:00:00Z)")
    try:
        moment = _EPOCH + timedelta(seconds=unix)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None
    if moment <= (now or _now()):
        raise ValueError(f"{text!r} is in the past")
    return moment


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _duration_arg(text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value:
        raise argparse.ArgumentTypeError(f"must be longer than zero, got {text!r}")
    return value


def _seconds_arg(text: str) -> int:
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _until_arg(text: str) -> datetime:
    try:
        return parse_until(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _url_arg(text: str) -> str:
    problem = status_url_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _until_of(args: argparse.Namespace) -> datetime | None:
    length: timedelta | None = args.for_
    if length is not None:
        try:
            return _now() + length
        except OverflowError:
            raise UsageError(args.prog, "argument --for: too far in the future") from None
    until: datetime | None = args.until
    return until


def _human_duration(seconds: float) -> str:
    """``7170`` -> ``1h 59m``: the largest unit, and the next one when it is not zero."""
    left = max(0, math.ceil(seconds))
    counts = []
    for size in (86400, 3600, 60, 1):
        count, left = divmod(left, size)
        counts.append(count)
    units = "dhms"
    first = next((i for i, count in enumerate(counts) if count), 3)
    parts = [f"{counts[first]}{units[first]}"]
    if first < 3 and counts[first + 1]:
        parts.append(f"{counts[first + 1]}{units[first + 1]}")
    return " ".join(parts)


def _human_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the state file ------------------------------------------------------------------------


class _Collect(logging.Handler):
    """Holds the warnings the switch logs (an unreadable state file) so they are reported
    once, in the command's own words, instead of as a log line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    logger = logging.getLogger("tidegate")
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _target(prog: str, option: str, text: str, *, writing: bool) -> Path:
    """``text`` as an absolute path to a file that may be (re)placed: not a folder, in a folder
    that exists (and that this user may write to, when ``writing``)."""
    path = Path(text).expanduser().absolute()
    if _is_folder(prog, option, path):
        raise UsageError(prog, f"argument {option}: {path} is a folder; name a file in it")
    folder = path.parent
    if not _is_folder(prog, option, folder):
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(prog, f"argument {option}: {folder} {problem}")
    if writing and not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(prog, f"argument {option}: the folder {folder} is not writable")
    return path


def _is_folder(prog: str, option: str, path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:  # a name too long, a loop of links...
        raise UsageError(prog, f"argument {option}: {exc.strerror or exc}: {path}") from None


def _state_path(args: argparse.Namespace, *, writing: bool) -> Path:
    text = args.state or os.environ.get(STATE_ENV, "")
    if not text:
        raise UsageError(args.prog, f"argument --state is required (or set {STATE_ENV})")
    return _target(args.prog, "--state", text, writing=writing)


def _open_switch(args: argparse.Namespace, *, writing: bool) -> tuple[MaintenanceSwitch, list[str]]:
    """The switch over ``--state`` (the environment is ignored: the file is what the command
    is about), and the warnings reading the file gave."""
    path = _state_path(args, writing=writing)
    with _collect_warnings() as warnings:
        try:
            switch = MaintenanceSwitch(path, env_var=None)
        except (TypeError, ValueError) as exc:
            raise UsageError(args.prog, f"argument --state: {exc}") from None
    return switch, warnings


def _write(args: argparse.Namespace, change: Any) -> MaintenanceSwitch:
    switch, warnings = _open_switch(args, writing=True)
    try:
        change(switch)
    except ValueError as exc:
        raise UsageError(args.prog, str(exc)) from None
    except OSError as exc:
        raise CommandError(str(exc)) from None
    for warning in warnings:
        print(
            f"{PROG}: note: replaced a state file that could not be read ({warning})",
            file=sys.stderr,
        )
    return switch


def _status_document(switch: MaintenanceSwitch, status: MaintenanceStatus) -> dict[str, Any]:
    path = switch.state_file
    exists = path is not None and os.path.isfile(path)
    return {
        "state_file": path,
        "exists": exists,
        "active": status.active,
        "message": status.message,
        "until": iso_utc(status.until),
        "retry_after": status.retry_after.delay() if status.active else None,
        "draining": status.draining,
    }


def _print_status(switch: MaintenanceSwitch, out: TextIO) -> None:
    status = switch.status()
    path = switch.state_file or ""
    if status.active:
        print(f"{'maintenance':<14}ON: requests get 503 maintenance", file=out)
        if status.message:
            print(f"{'  message':<14}{status.message}", file=out)
        if status.until is not None:
            left = (status.until - _now()).total_seconds()
            when = f"in {_human_duration(left)}" if left > 0 else "passed"
            print(f"{'  until':<14}{_human_time(status.until)} ({when})", file=out)
        print(f"{'  Retry-After':<14}{status.retry_after.delay()} s", file=out)
    else:
        print(f"{'maintenance':<14}off", file=out)
    if status.draining:
        print(
            f"{'draining':<14}ON: readiness answers 503 draining; requests are still served",
            file=out,
        )
    else:
        print(f"{'draining':<14}off", file=out)
    try:
        changed = datetime.fromtimestamp(os.stat(path).st_mtime, timezone.utc)
        where = f"last changed {_human_time(changed)}"
    except OSError:
        where = "not there yet: nothing is on"
    print(f"{'state file':<14}{path} ({where})", file=out)


# -- commands ------------------------------------------------------------------------------


def _maintenance_on(args: argparse.Namespace) -> int:
    until = _until_of(args)
    switch = _write(
        args,
        lambda s: s.enable(message=args.message, until=until, retry_after=args.retry_after),
    )
    _print_status(switch, sys.stdout)
    print("Every worker polling this file follows within its poll interval.")
    return 0


def _maintenance_off(args: argparse.Namespace) -> int:
    switch = _write(args, lambda s: s.disable())
    _print_status(switch, sys.stdout)
    return 0


def _maintenance_status(args: argparse.Namespace) -> int:
    switch, warnings = _open_switch(args, writing=False)
    if args.json:
        document = _status_document(switch, switch.status())
        document["error"] = warnings[0] if warnings else None
        if warnings:  # what the file says is unknown, so say nothing about it
            document.update(active=None, message=None, until=None, retry_after=None, draining=None)
        print(json.dumps(document, indent=2))
    elif not warnings:
        _print_status(switch, sys.stdout)
    if warnings:
        print(f"{PROG}: error: {warnings[0]}", file=sys.stderr)
        return 1
    return 0


def _drain(args: argparse.Namespace) -> int:
    switch = _write(args, lambda s: s.undrain() if args.off else s.drain())
    _print_status(switch, sys.stdout)
    if not args.off:
        print("Every worker polling this file drains within its poll interval.")
    return 0


def _page(args: argparse.Namespace) -> int:
    target = None
    if args.output not in (None, "-"):
        target = _target(args.prog, "--output", args.output, writing=True)
    message: str | None = args.message
    until = _until_of(args)
    retry_after: int | None = args.retry_after
    if until is not None:
        retry_after = max(1, math.ceil((until - _now()).total_seconds()))
    if args.state is not None:
        switch, warnings = _open_switch(args, writing=False)
        if warnings:
            raise CommandError(warnings[0])
        status = switch.status()
        if status.active:  # what is given here wins over what the file says
            message = status.message if message is None else message
            if until is None and retry_after is None:
                retry_after = status.retry_after.delay()
            until = status.until if until is None else until
    template = None
    if args.template is not None:
        try:
            template = Path(args.template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(args.prog, f"argument --template: cannot read it: {exc}") from None
    try:
        pages = ErrorPages(template=template, status_url=args.status_url)
    except (TypeError, ValueError) as exc:
        reason = str(exc).removeprefix("template: ")
        raise UsageError(args.prog, f"argument --template: {reason}") from None
    rendered = pages.render(
        "maintenance",
        retry_after=DEFAULT_PAGE_RETRY_AFTER if retry_after is None else retry_after,
        html_page=True,
        message=message,
        estimated_return=until,
    )
    if target is None:
        sys.stdout.write(rendered.body.decode("utf-8"))
        sys.stdout.flush()
        return 0
    try:
        _write_atomic(target, rendered.body)
    except OSError as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {target} ({len(rendered.body)} bytes)", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tidegate.demo import run

    return run(json_output=args.json)


# -- the parser ----------------------------------------------------------------------------


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
        metavar="PATH",
        help=f"the JSON state file every worker polls ({required_help})",
    )


def _build_parser() -> _Parser:
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
        type=_duration_arg,
        metavar="DURATION",
        help="estimated length, e.g. 30m or 1h30m",
    )
    ends.add_argument(
        "--until", type=_until_arg, metavar="ISO", help="estimated end, e.g. 2030-01-01T12:00Z"
    )
    on.add_argument(
        "--retry-after",
        type=_seconds_arg,
        metavar="DURATION",
        help="Retry-After when no end is known (default: the app's default_retry_after)",
    )
    on.set_defaults(handler=_maintenance_on)

    off = actions.add_parser(
        "off",
        help="serve requests again",
        description="Take every worker out of maintenance.",
        formatter_class=_Formatter,
    )
    _state_option(off, required_help=f"required unless {STATE_ENV} is set")
    off.set_defaults(handler=_maintenance_off)

    status = actions.add_parser(
        "status",
        help="show maintenance and drain",
        description="Show what the state file says: maintenance, its message, end and "
        "Retry-After, and drain. Exit code 1 if the file cannot be read.",
        formatter_class=_Formatter,
    )
    _state_option(status, required_help=f"required unless {STATE_ENV} is set")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_maintenance_status)

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
    drain.set_defaults(handler=_drain)

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
        "--for", dest="for_", type=_duration_arg, metavar="DURATION", help="estimated length"
    )
    page_ends.add_argument("--until", type=_until_arg, metavar="ISO", help="estimated end")
    page.add_argument(
        "--retry-after",
        type=_seconds_arg,
        metavar="DURATION",
        help=f"the page's retry hint when no end is known (default {DEFAULT_PAGE_RETRY_AFTER}s)",
    )
    page.add_argument("--status-url", type=_url_arg, metavar="URL", help="link to a status page")
    page.add_argument("--template", metavar="FILE", help="a replacement page template")
    _state_option(page, required_help="optional: take the message and end from it")
    page.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    page.set_defaults(handler=_page)

    demo = commands.add_parser(
        "demo",
        help="serve a small app and show every kind of 503 clients see",
        description="Serve a small app on 127.0.0.1, send real HTTP clients at it (normal "
        "load, overload, maintenance, a dependency down, drain) and print what they saw.",
        formatter_class=_Formatter,
    )
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    demo.set_defaults(handler=_demo)

    parser.set_defaults(handler=None)
    maintenance.set_defaults(handler=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tidegate`` command with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = _build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        if args.handler is None:
            if args.command == "maintenance":
                raise UsageError(f"{PROG} maintenance", "choose on, off or status")
            raise UsageError(PROG, "choose a command: maintenance, drain, page or demo")
        args.prog = _prog_of(args)
        handler = args.handler
        code: int = handler(args)
        return code
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc} (see {exc.prog} --help)", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep the interpreter's final
        # flush of stdout from failing again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _prog_of(args: argparse.Namespace) -> str:
    if args.command == "maintenance":
        return f"{PROG} maintenance {args.action}"
    return f"{PROG} {args.command}"
