"""``tidegate page``: the static maintenance page, for a reverse proxy to serve."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tidegate._tidegate import _write_atomic
from tidegate.cli._errors import CommandError, UsageError
from tidegate.cli._state import open_switch, target_path
from tidegate.cli._values import until_of, utc_now
from tidegate.responses import ErrorPages

#: Retry-After of a static page when neither ``--until`` nor ``--retry-after`` says more.
DEFAULT_PAGE_RETRY_AFTER = 60


def run_page(args: argparse.Namespace) -> int:
    target = None
    if args.output not in (None, "-"):
        target = target_path(args.prog, "--output", args.output, writing=True)
    message: str | None = args.message
    until = until_of(args)
    retry_after: int | None = args.retry_after
    if until is not None:
        retry_after = max(1, math.ceil((until - utc_now()).total_seconds()))
    if args.state is not None:
        switch, warnings = open_switch(args, writing=False)
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
