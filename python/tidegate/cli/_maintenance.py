"""``tidegate maintenance on|off|status`` and ``tidegate drain``."""

from __future__ import annotations

import argparse
import json
import sys

from tidegate.cli._errors import PROG
from tidegate.cli._state import _open_switch, _print_status, _status_document, _write
from tidegate.cli._values import _until_of


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
