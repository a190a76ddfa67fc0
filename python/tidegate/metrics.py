"""Prometheus metrics of the gate, maintenance, breakers and health checks.

The numbers live in the Rust core as atomics, one slot per process. Under Gunicorn (with the
hooks in :mod:`tidegate.gunicorn`) the workers of a server share one memory-mapped file of
fixed size, one slot per live worker plus the totals of the workers that exited, so whichever
worker is scraped reports the whole server, and counters never go back when workers are
replaced. Elsewhere each process reports itself.

Series: ``tidegate_requests_total{outcome,reason}``, ``tidegate_request_duration_seconds``
(histogram), ``tidegate_queue_time_seconds`` (histogram), ``tidegate_in_flight_requests``,
``tidegate_concurrency_limit``, ``tidegate_maintenance_active``, ``tidegate_draining``,
``tidegate_breaker_state{breaker,state}``, ``tidegate_breaker_calls_total{breaker,outcome}``,
``tidegate_health_check_up{check}``.

``outcome``/``reason`` pairs: ``admitted``/``none``, ``exempt``/``none``, ``probe``/``none``
(readiness, liveness, metrics), ``shed``/``overload``, ``shed``/``queue_time``,
``shed``/``priority``, ``refused``/``maintenance``, ``failed_fast``/``dependency`` (an admitted
or exempt request whose app raised an open breaker's error: counted on top of its first
count). Histogram buckets: 5 ms to 10 s (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10).

Apps that already export metrics with ``prometheus_client`` register a collector instead::

    from prometheus_client import REGISTRY
    from tidegate.metrics import TideGateCollector

    REGISTRY.register(TideGateCollector())
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Union

from tidegate import _tidegate

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = [
    "DEFAULT_SLOTS",
    "METRICS_DIR_ENV",
    "METRICS_FILE_ENV",
    "OPENMETRICS_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "TideGateCollector",
    "attach",
    "create_shared",
    "enable",
    "fold",
    "render",
]

#: Where the Gunicorn hooks create a server's shared metrics file (default: a new private
#: folder under ``/dev/shm``, or the temporary folder where there is none).
METRICS_DIR_ENV = "TIDEGATE_METRICS_DIR"
#: The shared metrics file of the server a worker belongs to, set by the master for its
#: workers.
METRICS_FILE_ENV = "TIDEGATE_METRICS_FILE"
#: Worker slots in a shared file unless told otherwise.
DEFAULT_SLOTS = 64
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_Path = Union[str, "os.PathLike[str]"]


def enable() -> None:
    """Turns counting on for every adapter left at ``metrics=None`` (the default), from now
    on. Serving a ``metrics_path``, making a :class:`TideGateCollector` and the Gunicorn hooks'
    shared file do it; until then an app that never reads metrics does not pay for them."""
    _tidegate.metrics_enable()


def render(accept: str | None = None, *, path: _Path | None = None) -> tuple[str, bytes]:
    """``(content_type, body)`` of a scrape: OpenMetrics when ``accept`` (the scraper's
    ``Accept`` header) weighs it above the Prometheus text format, which is the default.

    The scrape covers this process, or the whole server when this process records into a
    shared file; with ``path``, the shared file there (for a process that holds no slot of it,
    such as the master or a tool).
    """
    return _tidegate.metrics_scrape(accept, path)


def create_shared(directory: _Path, *, slots: int = DEFAULT_SLOTS) -> str:
    """Creates a server's shared metrics file in ``directory`` and returns its path.

    The file has a fixed size (about 2 KiB per slot): ``slots`` is the most workers that can
    be alive at once. Its name holds this process's pid and a random part, so servers sharing
    a directory each get their own. ``OSError`` naming the directory when it cannot be
    written; ``ValueError`` for ``slots`` outside 1 to 4096.
    """
    if isinstance(slots, bool) or not isinstance(slots, int):
        raise TypeError(f"slots: must be an int, got {type(slots).__name__}")
    return str(_tidegate.metrics_create(directory, slots))


def attach(path: _Path) -> int:
    """Makes this process record into a slot of the shared file at ``path`` (a worker, at
    start-up, before it serves). Returns the slot's index.

    ``ValueError`` when the file is not a metrics file of this version (garbage, truncated),
    ``OSError`` when it cannot be opened or every slot is taken by a live process,
    ``RuntimeError`` when this process already records into a shared file.
    """
    return _tidegate.metrics_attach(path)


def fold(path: _Path, pid: int) -> bool:
    """After the process ``pid`` exited: adds its counters to the file's totals and frees its
    slot (its gauges are dropped). False when it held no slot. A scrape that finds a dead
    process's slot does the same, so this only makes it sooner."""
    return _tidegate.metrics_fold(path, pid)


class TideGateCollector:
    """A ``prometheus_client`` collector of tidegate's metrics (the same scrape as
    :func:`render`), for apps that serve their own ``/metrics``.

    ``prometheus_client`` is imported when the collector collects, so tidegate does not
    depend on it.
    """

    def __init__(self, *, path: _Path | None = None) -> None:
        self._path = path
        enable()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import Metric

        for name, kind, help_text, unit, samples in _tidegate.metrics_families(self._path):
            family = Metric(name, help_text, kind, unit or "")
            for sample_name, labels, value in samples:
                family.add_sample(sample_name, labels, value)
            yield family

    def describe(self) -> list[Metric]:
        """Nothing up front: registering the collector does not scrape."""
        return []
