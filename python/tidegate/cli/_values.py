"""The values a command line carries: durations, instants, URLs, and how they are shown."""

from __future__ import annotations

import argparse
import math
import re
from datetime import datetime, timedelta, timezone

from tidegate._tidegate import _parse_iso
from tidegate.cli._errors import UsageError
from tidegate.responses import status_url_problem

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
_SECONDS = re.compile(r"\d+", re.ASCII)
_DURATION_HINT = "use e.g. 90s, 15m, 2h, 1h30m or 1d"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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
    if moment <= (now or utc_now()):
        raise ValueError(f"{text!r} is in the past")
    return moment


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def duration_arg(text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value:
        raise argparse.ArgumentTypeError(f"must be longer than zero, got {text!r}")
    return value


def seconds_arg(text: str) -> int:
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def until_arg(text: str) -> datetime:
    try:
        return parse_until(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def url_arg(text: str) -> str:
    problem = status_url_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def until_of(args: argparse.Namespace) -> datetime | None:
    length: timedelta | None = args.for_
    if length is not None:
        try:
            return utc_now() + length
        except OverflowError:
            raise UsageError(args.prog, "argument --for: too far in the future") from None
    until: datetime | None = args.until
    return until


def human_duration(seconds: float) -> str:
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


def human_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
