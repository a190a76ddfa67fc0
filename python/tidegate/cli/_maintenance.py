"""``tidegate maintenance on|off|status`` and ``tidegate drain``."""

from __future__ import annotations

import argparse
import json
import sys

from tidegate.cli._errors import PROG
from tidegate.cli._state import open_switch, print_status, status_document, write_state
from tidegate.cli._values import until_of


def run_maintenance_on(args: argparse.Namespace) -> int:
    until = until_of(args)
    switch = write_state(
        args,
        lambda s: s.enable(message=args.message, until=until, retry_after=args.retry_after),
    )
    print_status(switch, sys.stdout)
    print("Every worker following this state follows within its poll interval.")
    return 0


def run_maintenance_off(args: argparse.Namespace) -> int:
    switch = write_state(args, lambda s: s.disable())
    print_status(switch, sys.stdout)
    return 0


def run_maintenance_status(args: argparse.Namespace) -> int:
    switch, warnings = open_switch(args, writing=False)
    if args.json:
        document = status_document(switch, switch.status())
        document["error"] = warnings[0] if warnings else None
        if warnings:  # what the file says is unknown, so say nothing about it
            document.update(active=None, message=None, until=None, retry_after=None, draining=None)
        print(json.dumps(document, indent=2))
    elif not warnings:
        print_status(switch, sys.stdout)
    if warnings:
        reason = warnings[0].split("; keeping the last")[0]
        print(f"{PROG}: error: {reason}", file=sys.stderr)
        return 1
    return 0


def run_drain(args: argparse.Namespace) -> int:
    switch = write_state(args, lambda s: s.undrain() if args.off else s.drain())
    print_status(switch, sys.stdout)
    if not args.off:
        print("Every worker following this state drains within its poll interval.")
    return 0
