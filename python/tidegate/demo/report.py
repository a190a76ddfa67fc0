"""What clients saw, summed up per row, and the plain-text table ``tidegate demo`` prints."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tidegate.demo.clients import Seen

# -- what clients saw ----------------------------------------------------------------------


def percentile(values: Iterable[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` in 0..100), or None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(share / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One line of the table: a burst and what ``/health`` said meanwhile."""

    label: str
    seen: list[Seen]
    health: str

    def summary(self) -> dict[str, Any]:
        ok = [s.seconds for s in self.seen if s.status == 200]
        refused = [s for s in self.seen if s.status == 503]
        waits = [s.retry_after for s in refused if s.retry_after is not None]
        return {
            "label": self.label,
            "requests": len(self.seen),
            "ok": len(ok),
            "unavailable": dict(Counter(str(s.reason) for s in refused)),
            "other": len(self.seen) - len(ok) - len(refused),
            "retry_after": [min(waits), max(waits)] if waits else None,
            "ok_ms": _latency(ok),
            "unavailable_ms": _latency(s.seconds for s in refused),
            "health": self.health,
        }


def _latency(seconds: Iterable[float]) -> dict[str, float] | None:
    values = list(seconds)
    p50, p99 = percentile(values, 50), percentile(values, 99)
    if p50 is None or p99 is None:
        return None
    return {"p50": round(p50 * 1000, 1), "p99": round(p99 * 1000, 1)}


@dataclass
class Scene:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    takeaway: str = ""


# -- the table ---------------------------------------------------------------------------


HEADERS = (
    "scene",
    "reqs",
    "200",
    "503s (reason)",
    "other",
    "Retry-After",
    "200 p50/p99",
    "503 p50/p99",
    "/health",
)
_RIGHT = {1, 2, 4}


def _pair(latency: dict[str, float] | None) -> str:
    return "-" if latency is None else f"{latency['p50']:.0f}/{latency['p99']:.0f} ms"


def _cells(number: int, first: bool, row: dict[str, Any]) -> tuple[str, ...]:
    refused = ", ".join(f"{count} {reason}" for reason, count in row["unavailable"].items())
    waits = row["retry_after"]
    if waits is None:
        wait = "-"
    elif waits[0] == waits[1]:
        wait = f"{waits[0]} s"
    else:
        wait = f"{waits[0]}-{waits[1]} s"
    return (
        f"{number if first else ' '} {row['label']}",
        str(row["requests"]),
        str(row["ok"]),
        refused or "0",
        str(row["other"]),
        wait,
        _pair(row["ok_ms"]),
        _pair(row["unavailable_ms"]),
        row["health"],
    )


def table(report: dict[str, Any]) -> str:
    """The report as an aligned plain-text table followed by one takeaway per scene."""
    lines = [
        tuple(_cells(scene["number"], index == 0, row) for index, row in enumerate(scene["rows"]))
        for scene in report["scenes"]
    ]
    body = [cells for scene in lines for cells in scene]
    widths = [max(len(r[i]) for r in (HEADERS, *body)) for i in range(len(HEADERS))]

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(width) if i in _RIGHT else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=False))
        ).rstrip()

    out = [render(HEADERS), render(tuple("-" * w for w in widths))]
    out += [render(cells) for cells in body]
    out.append("")
    out += [
        f"{scene['number']} {scene['title']}: {scene['takeaway']}" for scene in report["scenes"]
    ]
    return "\n".join(out)
