"""The state file a command reads or replaces, and how its status is shown."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from tidegate._tidegate import MaintenanceStatus, MaintenanceSwitch, _is_store_uri
from tidegate.cli._errors import PROG, CommandError, UsageError
from tidegate.cli._values import human_duration, human_time, utc_now
from tidegate.responses import iso_utc

#: Where ``--state`` is read from when it is not given.
STATE_ENV = "TIDEGATE_STATE_FILE"


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


def target_path(prog: str, option: str, text: str, *, writing: bool) -> Path:
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


def _state_target(args: argparse.Namespace, *, writing: bool) -> Path | str:
    """``--state`` (or ``$TIDEGATE_STATE_FILE``): a checked path, or a store URI as given."""
    text = args.state or os.environ.get(STATE_ENV, "")
    if not text:
        raise UsageError(args.prog, f"argument --state is required (or set {STATE_ENV})")
    # The switch's own rule: a URI it knows is used, one it does not is refused by it.
    if _is_store_uri(text):
        return text
    return target_path(args.prog, "--state", text, writing=writing)


def open_switch(args: argparse.Namespace, *, writing: bool) -> tuple[MaintenanceSwitch, list[str]]:
    """The switch over ``--state`` (the environment is ignored: the file or store is what the
    command is about), and the warnings reading it gave. The switch only looks once: it
    neither polls nor records itself among a store's followers."""
    target = _state_target(args, writing=writing)
    with _collect_warnings() as warnings:
        try:
            switch = MaintenanceSwitch(target, env_var=None, _follow=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(args.prog, f"argument --state: {exc}") from None
    return switch, warnings


def write_state(args: argparse.Namespace, change: Any) -> MaintenanceSwitch:
    switch, warnings = open_switch(args, writing=True)
    try:
        change(switch)
    except ValueError as exc:
        raise UsageError(args.prog, str(exc)) from None
    except OSError as exc:
        raise CommandError(str(exc)) from None
    for warning in warnings:
        print(
            f"{PROG}: note: replaced {'a state file' if switch.state_file else 'a stored state'}"
            f" that could not be read ({warning})",
            file=sys.stderr,
        )
    return switch


def fleet(switch: MaintenanceSwitch) -> list[dict[str, Any]] | None:
    """The processes following the switch's Redis store (``None`` for a state file)."""
    try:
        text = switch._fleet()
    except OSError as exc:
        raise CommandError(str(exc)) from None
    return None if text is None else list(json.loads(text))


def status_document(switch: MaintenanceSwitch, status: MaintenanceStatus) -> dict[str, Any]:
    path = switch.state_file
    exists = path is not None and os.path.isfile(path)
    if path is None:
        return {
            "store": switch.store,
            "active": status.active,
            "message": status.message,
            "until": iso_utc(status.until),
            "retry_after": status.retry_after.delay() if status.active else None,
            "draining": status.draining,
            "processes": fleet(switch),
        }
    return {
        "state_file": path,
        "exists": exists,
        "active": status.active,
        "message": status.message,
        "until": iso_utc(status.until),
        "retry_after": status.retry_after.delay() if status.active else None,
        "draining": status.draining,
    }


def print_status(switch: MaintenanceSwitch, out: TextIO) -> None:
    status = switch.status()
    path = switch.state_file or ""
    if status.active:
        print(f"{'maintenance':<14}ON: requests get 503 maintenance", file=out)
        if status.message:
            print(f"{'  message':<14}{status.message}", file=out)
        if status.until is not None:
            left = (status.until - utc_now()).total_seconds()
            when = f"in {human_duration(left)}" if left > 0 else "passed"
            print(f"{'  until':<14}{human_time(status.until)} ({when})", file=out)
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
    if not path:
        _print_fleet(switch, status, out)
        return
    try:
        changed = datetime.fromtimestamp(os.stat(path).st_mtime, timezone.utc)
        where = f"last changed {human_time(changed)}"
    except OSError:
        where = "not there yet: nothing is on"
    print(f"{'state file':<14}{path} ({where})", file=out)


def _print_fleet(switch: MaintenanceSwitch, status: MaintenanceStatus, out: TextIO) -> None:
    """The store, then one line per process following it: what it sees and how recently."""
    print(f"{'store':<14}{switch.store}", file=out)
    processes = fleet(switch) or []
    agree = sum(1 for p in processes if p.get("active") == status.active)
    print(
        f"{'processes':<14}{len(processes)} following, {agree} of them see maintenance "
        f"{'ON' if status.active else 'off'}",
        file=out,
    )
    if not processes:
        return
    now = time.time()
    print(f"  {'host':<24}{'pid':>8}  {'maintenance':<13}{'draining':<10}last poll", file=out)
    for beat in processes:
        age = now - float(beat.get("polled_at") or 0)
        print(
            f"  {str(beat.get('host'))[:23]:<24}{beat.get('pid')!s:>8}  "
            f"{'ON' if beat.get('active') else 'off':<13}"
            f"{'yes' if beat.get('draining') else 'no':<10}{max(age, 0):.1f} s ago",
            file=out,
        )
