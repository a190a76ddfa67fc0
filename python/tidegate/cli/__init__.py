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
import os
import sys
from collections.abc import Sequence

from tidegate.cli._errors import PROG, CommandError, UsageError
from tidegate.cli._page import DEFAULT_PAGE_RETRY_AFTER
from tidegate.cli._parser import build_parser
from tidegate.cli._state import STATE_ENV
from tidegate.cli._values import parse_duration, parse_until

__all__ = [
    "DEFAULT_PAGE_RETRY_AFTER",
    "PROG",
    "STATE_ENV",
    "CommandError",
    "UsageError",
    "main",
    "parse_duration",
    "parse_until",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tidegate`` command with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
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
