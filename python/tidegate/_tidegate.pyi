"""Stubs for the native core. Their docstrings are the API reference."""

import os
import sys
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from typing_extensions import disjoint_base, final

if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self
from typing import ParamSpec

_P = ParamSpec("_P")
_R = TypeVar("_R")

__version__: str
__all__ = [
    "EXEMPT_GATE",
    "EXEMPT_MAINTENANCE",
    "MAX_QUEUE_TIME",
    "PRIORITY_CRITICAL",
    "PRIORITY_DEFAULT",
    "PRIORITY_SHEDDABLE",
    "AdaptiveGate",
    "AsgiCore",
    "CapacityGate",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClosingBody",
    "DecisionCore",
    "Exchange",
    "LastBody",
    "MaintenanceStatus",
    "MaintenanceSwitch",
    "MiddlewareCore",
    "Permit",
    "PreprocessRequest",
    "ProcessResponse",
    "ReleasingApp",
    "RetryAfter",
    "Sent",
    "__version__",
    "_format_iso",
    "_is_store_uri",
    "_parse_iso",
    "_write_atomic",
    "drain_process",
    "metrics_attach",
    "metrics_attached",
    "metrics_breaker_call",
    "metrics_breaker_state",
    "metrics_create",
    "metrics_enable",
    "metrics_families",
    "metrics_fold",
    "metrics_health_check",
    "metrics_queue_time",
    "metrics_record",
    "metrics_release",
    "metrics_scrape",
    "metrics_set_gauge",
    "prefers_html",
    "process_draining",
    "undrain_process",
]

@final
class CapacityGate:
    """A concurrency limit that sheds excess work at once.

    Admission is one atomic step, so no interleaving of threads ever has more than ``limit``
    permits out. Lowering ``limit`` evicts nobody; it stops admissions until enough permits
    come back.
    """

    def __new__(cls, limit: int) -> CapacityGate:
        """``limit`` is an int >= 1 (``ValueError``/``TypeError`` otherwise)."""

    @property
    def limit(self) -> int:
        """The most permits out at once. Settable at runtime."""

    @limit.setter
    def limit(self, value: int) -> None: ...
    @property
    def in_flight(self) -> int:
        """Permits out right now."""

    @property
    def peak(self) -> int:
        """The most permits ever out at once."""

    @property
    def admitted(self) -> int:
        """Permits handed out so far."""

    @property
    def rejected(self) -> int:
        """Attempts refused so far (a timed-out ``acquire`` counts once)."""

    def try_acquire(self) -> Permit | None:
        """A permit if one is free right now, else ``None``. Never blocks."""

    def acquire(self, timeout: float | None = None) -> Permit | None:
        """Wait up to ``timeout`` seconds (``None``: no limit) for a permit, GIL released.

        Returns ``None`` when the time runs out. Signals (Ctrl-C) interrupt the wait.
        ``timeout`` is a finite number >= 0; one too long for the clock to count (such as
        ``1e19``, hundreds of billions of years) is no limit, as ``None`` is.
        """

@final
class AdaptiveGate:
    """A concurrency limit that sets itself from the latency of the requests it admits.

    It has the interface of :class:`CapacityGate` except that ``limit`` is read-only: each
    permit is one latency sample, from admission to release, and the limiter moves the limit
    within ``[min_limit, max_limit]``. ``algorithm`` is ``"gradient2"`` (the default: the
    latency gradient against a baseline measured with the limit held low for a moment,
    every 10 to 30 s), ``"aimd"`` or ``"vegas"``, after Netflix's concurrency-limits; the
    README gives each one's formulas and defaults. ``initial``, ``min_limit`` and
    ``max_limit`` are ints >= 1 with ``min_limit <= initial <= max_limit``.
    """

    def __new__(
        cls,
        *,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        algorithm: Literal["gradient2", "aimd", "vegas"] = "gradient2",
    ) -> AdaptiveGate: ...
    @property
    def limit(self) -> int:
        """The limit in force now (set by the limiter)."""

    @property
    def min_limit(self) -> int: ...
    @property
    def baseline(self) -> float | None:
        """The no-load latency in seconds the algorithm compares with (Gradient2 and Vegas),
        once measured."""

    @property
    def probing(self) -> bool:
        """Whether the limit is held low right now to measure the baseline."""
    @property
    def max_limit(self) -> int: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def in_flight(self) -> int:
        """Permits out right now."""

    @property
    def peak(self) -> int:
        """The most permits ever out at once."""

    @property
    def admitted(self) -> int:
        """Permits handed out so far."""

    @property
    def rejected(self) -> int:
        """Attempts refused so far."""

    def try_acquire(self) -> Permit | None:
        """A permit if one is free right now, else ``None``. Never blocks."""

    def acquire(self, timeout: float | None = None) -> Permit | None:
        """Wait up to ``timeout`` seconds (``None``: no limit) for a permit, GIL released."""

@final
class Permit:
    """One admitted unit of work, released exactly once.

    ``release()`` is idempotent; leaving a ``with`` block releases; a permit that is garbage
    collected unreleased is released then, as a safety net.
    """

    def release(self) -> None:
        """Give the slot back. Calling it again does nothing."""

    @property
    def released(self) -> bool:
        """Whether the slot has been given back."""

    def __enter__(self) -> Permit: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool: ...

@final
class RetryAfter:
    """When a client may come back: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).

    Immutable and hashable; equal when the header value means the same thing. Build one with
    ``after``, ``at`` or ``parse``; it cannot be instantiated directly.
    """

    @staticmethod
    def after(seconds: int | float | timedelta) -> RetryAfter:
        """delay-seconds. Fractions round up; delays above 2147483648 saturate there.

        Negative or non-finite ``seconds`` is a ``ValueError``; anything but an int, float or
        ``timedelta`` (a bool, str or ``None`` too) is a ``TypeError``.
        """

    @staticmethod
    def at(when: datetime) -> RetryAfter:
        """An HTTP-date. A naive ``when`` is UTC; a fraction of a second rounds up.

        ``ValueError`` if the instant is past ``Fri, 31 Dec 9999 23:59:59 GMT``.
        """

    @staticmethod
    def parse(text: str, *, now: datetime | None = None) -> RetryAfter:
        """Reads a ``Retry-After`` field value exactly as RFC 9110 §10.2.3 and §5.6.7 define it.

        Accepts delay-seconds (any number of digits, saturating at 2147483648), IMF-fixdate
        (``Sun, 06 Nov 1994 08:49:37 GMT``), RFC 850 (``Sunday, 06-Nov-94 08:49:37 GMT``) and
        asctime (``Sun Nov  6 08:49:37 1994``); spaces and tabs around the value are ignored.
        Names are case-sensitive, a leap second is allowed only as ``23:59:60``, and a day name
        that disagrees with the date is rejected. An RFC 850 two-digit year that would be more
        than 50 years after ``now`` (default: the current time) is the century before.
        Anything else is a ``ValueError`` saying why.
        """

    def header_value(self) -> str:
        """The exact header text: delay-seconds digits or an IMF-fixdate."""

    def delay(self, now: datetime | None = None) -> int:
        """Whole seconds from ``now`` (default: the current time; naive is UTC) until the
        client may come back, rounded up; 0 for a date in the past."""

    def when(self, now: datetime | None = None) -> datetime:
        """The instant the client may come back, as an aware UTC ``datetime``.

        A delay counts from ``now`` (default: the current time; naive is UTC), a fraction of a
        second rounded up. ``ValueError`` if the instant is outside the years 1 to 9999 that a
        ``datetime`` can hold.
        """

    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

def drain_process() -> None:
    """Make this whole process report draining: readiness (``HealthChecks``) answers 503 with
    reason ``"draining"`` and every ``MaintenanceSwitch`` says ``draining``, while requests
    are still served. In-process only (no state file is written); idempotent. The Gunicorn
    hooks in :mod:`tidegate.gunicorn` call it when a worker gets SIGTERM."""

def undrain_process() -> None:
    """End :func:`drain_process`. Drains set through a switch or its state file stand."""

def process_draining() -> bool:
    """Whether :func:`drain_process` is in effect. An atomic load; never raises."""

def prefers_html(accept: str) -> bool:
    """Whether an ``Accept`` header value ranks ``text/html`` above ``application/json``.

    Ties, an empty value and ``*/*`` go to JSON. Never raises for a ``str``: one that is not
    valid UTF-8 (a lone surrogate) is read with replacement characters.
    """

def _parse_iso(text: str) -> int | None:
    """The Unix seconds of an ISO-8601 date and time, or ``None`` when ``text`` is not one.

    Reads ``YYYY-MM-DDTHH:MM[:SS[.fraction]]`` followed by ``Z``, ``+HH:MM``, ``-HH:MM`` or
    nothing (UTC), ``T`` or a space between date and time, surrounding whitespace ignored, a
    fraction of a second dropped: what a state file's ``until`` may hold. A bare
    ``YYYY-MM-DD`` is midnight UTC. The instant may lie outside the years 1 to 9999 (an offset
    can push it there); the caller decides what that means.
    """

def _format_iso(value: datetime) -> str:
    """``value`` as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC, as a state file stores it: a naive
    datetime is UTC, a fraction of a second is dropped. ``ValueError`` when the instant, in
    UTC, falls outside the years 1 to 9999."""

def _is_store_uri(text: str) -> bool:
    """Whether a ``store`` (or the CLI's ``--state``) value is meant as a URI
    (``scheme://...``) rather than a file path, by the switch's own rule."""

def _write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` the way a state file is written: a reader
    sees the old file or the new one, never a part. The bytes go to a new temporary file in
    the same folder, are flushed to disk and renamed over ``path``; the result has mode
    0o644 whatever the umask. Runs without the GIL. ``OSError`` saying what failed; ``path``
    is left as it was then."""

# Metrics (see tidegate.metrics). Every process records into one slot: its own, or one of a
# shared file after metrics_attach.

_Family = tuple[str, str, str, str | None, list[tuple[str, dict[str, str], float]]]

def metrics_enable() -> None:
    """Turns counting on for adapters left at ``metrics=None``."""

def metrics_scrape(
    accept: str | None = None, path: str | os.PathLike[str] | None = None
) -> tuple[str, bytes]:
    """``(content_type, body)``: the Prometheus text format 0.0.4, or OpenMetrics 1.0.0 when
    ``accept`` weighs it higher. Of this process (the shared file it records into, if any), or
    of the shared file at ``path``, whose dead workers' slots are folded on the way.
    ``ValueError`` for a file that is not a metrics file, ``OSError`` when it cannot be read."""

def metrics_families(path: str | os.PathLike[str] | None = None) -> list[_Family]:
    """The families of a scrape as ``(name, type, help, unit, samples)``, each sample
    ``(name, labels, value)``; counters are named without ``_total``, as OpenMetrics does."""

def metrics_create(directory: str | os.PathLike[str], slots: int = 64) -> Path:
    """Creates a shared metrics file of fixed size with ``slots`` worker slots (1 to 4096) in
    ``directory`` and returns its path. The name holds this pid and a random part."""

def metrics_attach(path: str | os.PathLike[str]) -> int:
    """Takes a slot of the shared file at ``path``; this process records there from now on and
    its scrapes sum the whole file. Returns the slot. ``ValueError`` for a bad file, ``OSError``
    when it cannot be opened or every slot belongs to a live process, ``RuntimeError`` when
    this process already records into a file."""

def metrics_fold(path: str | os.PathLike[str], pid: int) -> bool:
    """Folds the slot of the exited process ``pid`` into the file's totals and frees it.
    False when no slot belongs to ``pid``."""

def metrics_attached() -> tuple[Path, int] | None:
    """``(path, slot)`` of the shared file this process records into, or ``None``."""

def metrics_record(outcome: str, reason: str) -> None:
    """Counts one request in ``tidegate_requests_total``; ``("admitted", "none")`` also counts
    it in flight until :func:`metrics_release`. ``ValueError`` for an unknown pair."""

def metrics_release(seconds: float) -> None:
    """An admitted request finished ``seconds`` after its admission."""

def metrics_queue_time(seconds: float) -> None:
    """A request waited ``seconds`` in front of the app."""

def metrics_set_gauge(name: str, value: int) -> None:
    """Sets ``concurrency_limit``, ``maintenance_active`` or ``draining`` for this process."""

def metrics_breaker_state(name: str, state: str) -> None:
    """Reports breaker ``name`` as ``closed``, ``open`` or ``half_open``."""

def metrics_breaker_call(name: str, outcome: str) -> None:
    """Counts a call through breaker ``name``: ``success``, ``failure``, ``ignored`` or
    ``rejected``."""

def metrics_health_check(name: str, up: bool) -> None:
    """Reports health check ``name``'s last result."""

#: ``exempt`` flag of :meth:`DecisionCore.decide`: the request's view skips the gate.
EXEMPT_GATE: int
#: ``exempt`` flag of :meth:`DecisionCore.decide`: the request's view skips maintenance.
EXEMPT_MAINTENANCE: int
#: The longest wait in front of the app the core believes (seconds); a longer one is taken
#: for clocks that disagree, so ``max_queue_time`` may be at most this.
MAX_QUEUE_TIME: float
#: Priority flags of :meth:`DecisionCore.decide` (at most one): the request's view is critical,
#: default or sheddable.
PRIORITY_CRITICAL: int
PRIORITY_DEFAULT: int
PRIORITY_SHEDDABLE: int

@disjoint_base
class DecisionCore:
    """The one per-request decision, for adapters that build their own responses (the Flask
    hooks, the Django middleware). Not for direct use.

    In order: routes of ours (health answers) and exempt paths, exempt views (``exempt``
    flags), maintenance with its bypass, the gate. Configured once from
    ``Policy.core_config()``.
    """

    def __new__(cls, *_args: object, **_kwargs: object) -> DecisionCore: ...
    def _configure(self, decision: dict[str, Any], /) -> None: ...
    def decide(self, environ: dict[str, Any], exempt: int = 0) -> Any:
        """``None`` to let the request through (an admitted request's permit is kept in
        ``environ``), or the ``Rendered`` to answer with."""
    def _bind_hooks(
        self,
        *,
        context: Any,
        attrs: Sequence[str],
        exempt_views: dict[Any, int],
        exempt_of: Any,
        on_answer: Any,
    ) -> None: ...
    def before(self) -> Any:
        """A before-request hook: ``None`` to go on, or ``on_answer``'s response."""
    def after(self, response: Any) -> Any:
        """An after-request hook: a finished response gives its permit back; a streamed one
        keeps it for its body's close."""
    def dependency(self, environ: dict[str, Any], error: BaseException) -> Any:
        """The dependency 503 (a ``Rendered``) for an open breaker's error from the app."""
    def body_for(self, environ: dict[str, Any], rendered: Any) -> bytes:
        """The body to send for ``rendered``: its bytes, or none for a ``HEAD`` request."""
    def release(self, environ: dict[str, Any]) -> None:
        """Gives back the permit ``decide`` kept in ``environ``, if it is still there."""
    def hand_over(self, environ: dict[str, Any]) -> Permit | None:
        """Takes the permit out of ``environ`` for a streamed body to release when closed."""

@disjoint_base
class MiddlewareCore:
    """The per-request half of :class:`tidegate.wsgi.TideGateMiddleware`. Not for direct use."""

    def __new__(cls, *_args: object, **_kwargs: object) -> MiddlewareCore: ...
    def _configure(
        self,
        *,
        app: object,
        decision: dict[str, Any],
        start_dependency: Any,
        dependency_error: object,
    ) -> None: ...
    def __call__(self, *args: Any) -> Iterable[bytes]: ...

@disjoint_base
class AsgiCore:
    """The per-request half of :class:`tidegate.asgi.TideGateMiddleware`. Not for direct use."""

    def __new__(cls, *_args: object, **_kwargs: object) -> AsgiCore: ...
    def _configure(
        self,
        *,
        app: object,
        decision: dict[str, Any],
        other: Any,
        answer: Any,
        dependency_error: object,
    ) -> None: ...
    def __call__(self, scope: Any, receive: Any, send: Any, /) -> Awaitable[None]: ...
    def decide(self, scope: Any) -> Any:
        """For a scope the adapter serves itself: ``None`` (go on), a ``Permit`` (go on, then
        release it) or the ``Rendered`` to refuse with."""

@final
class Exchange:
    """One ASGI ``http`` request in the middleware: the view of its scope the decision reads
    (``get``, by WSGI environ key), the ``send`` the app is given, and the awaitable the server
    awaits. Made by :class:`AsgiCore` only."""

    def get(self, key: str, default: Any = None) -> Any:
        """``PATH_INFO``, ``REQUEST_METHOD``, ``REMOTE_ADDR``, ``QUERY_STRING`` or
        ``HTTP_<NAME>`` of the request; ``default`` for anything else."""
    @property
    def scope(self) -> dict[str, Any]:
        """The ASGI scope."""
    def __call__(self, message: Any, /) -> Any: ...
    def __await__(self) -> Generator[Any, Any]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any, /) -> Any: ...
    def throw(self, *args: Any) -> Any: ...
    def close(self) -> None: ...

@final
class LastBody:
    """The server's ``send`` of an app's last body, when its first step did not finish it:
    awaited through this, the request's permit goes back once it is done. Made by
    :class:`Exchange` only."""

    def __await__(self) -> Generator[Any, Any]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any, /) -> Any: ...
    def throw(self, *args: Any) -> Any: ...
    def close(self) -> None: ...

@final
class Sent:
    """What an app awaits of a last body the server took at once: an awaitable that is over.
    One per middleware, shared by every request."""

    def __await__(self) -> Generator[Any, Any]: ...
    def __next__(self) -> None: ...
    def send(self, value: Any, /) -> None: ...
    def throw(self, *args: Any) -> None: ...
    def close(self) -> None: ...

@final
class PreprocessRequest:
    """Flask's ``app.preprocess_request``, wrapped: while ``hook`` (tidegate's before-request
    hook) is the only thing Flask's own method would run, it decides without Flask's per-hook
    dispatch; otherwise the original runs. Not for direct use."""

    def __new__(
        cls, core: DecisionCore, app: Any, hook: Any, original: Any, *, skippable: bool
    ) -> PreprocessRequest: ...
    @property
    def original(self) -> Any:
        """The wrapped method."""
    def __call__(self, *args: Any) -> Any: ...

@final
class ProcessResponse:
    """Flask's ``app.process_response``, wrapped: the original, then the step that gives a
    finished response's permit back. Not for direct use."""

    def __new__(cls, core: DecisionCore, original: Any) -> ProcessResponse: ...
    @property
    def original(self) -> Any:
        """The wrapped method."""
    def __call__(self, response: Any) -> Any: ...

@final
class ReleasingApp:
    """Wraps a framework's WSGI callable so that the permit a before-request hook left in the
    environ goes back when the server closes the body, or at once if the app raises."""

    def __new__(cls, app: Any) -> ReleasingApp: ...
    @property
    def app(self) -> Any:
        """The wrapped callable."""
    def __call__(self, *args: Any) -> Iterable[bytes]: ...

@final
class ClosingBody:
    """The response iterable the middleware hands to the server.

    Iterating it iterates the app's body; ``close()`` closes that body first and then gives the
    permit back, exactly once. Dropped unclosed, it gives the permit back then.
    """

    def __iter__(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...
    @property
    def released(self) -> bool: ...

class CircuitOpenError(Exception):
    """A call refused without running: its breaker is open, or half-open with every probe
    slot taken.

    Raised by ``CircuitBreaker.call``, the decorator and the ``with`` form when no
    ``fallback`` applies. An instance raised by hand has ``breaker = None`` and
    ``retry_after = 0.0``.
    """

    breaker: CircuitBreaker | None
    """The breaker that refused the call."""
    retry_after: float
    """Seconds until the breaker lets a probe through (0.0 when half-open: a probe is
    already running)."""

@disjoint_base
class CircuitBreaker:
    """A circuit breaker around calls to one dependency.

    ``closed``: calls run; ``failure_threshold`` consecutive failures (or, with
    ``failure_rate``, that share of failed calls among at least ``minimum_calls`` in the last
    ``window`` seconds) open it. ``open``: calls fail fast with ``CircuitOpenError`` (or
    return ``fallback(*args, **kwargs)``). After ``reset_timeout`` seconds it turns
    ``half_open`` on the next call or state read (no background thread), and lets at most
    ``half_open_max_calls`` probe calls run at once; ``success_threshold`` probe successes
    close it, one probe failure opens it again. With ``max_reset_timeout``, each re-trip from
    half-open multiplies the open time by ``backoff`` up to that cap; a close starts over.

    A probe holds its slot for at most ``probe_timeout`` seconds (default: the larger of
    ``reset_timeout`` and 30), so a probe that hangs, or whose thread is gone, cannot keep the
    breaker half-open and refusing for ever: once the bound passes, the next call takes the
    slot. The late probe's result, when it comes, is counted in ``total_failures`` or
    ``total_successes`` but moves the state no more than any other late result.

    Exceptions that are instances of ``exclude``, and ``BaseException`` that is not an
    ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``), count as neither
    failure nor success: they propagate and free the probe slot they held. A call admitted
    before a state change cannot affect the new state when it finishes late. No lock is held
    while a protected call runs.

    ``store`` (a ``redis://`` or ``unix://`` URI, as ``MaintenanceSwitch`` takes) shares the
    state with every breaker of the same name on that store: a local open is published and
    opens the others within ``poll_interval`` seconds (at once where change notices get
    through); a probe that closes it closes them. Half-open admits a probe only under a
    reservation held in the store, at most ``half_open_max_calls`` across the fleet; a
    reservation expires ``probe_timeout`` plus two poll intervals after its holder last
    renewed it. A thread of the breaker does all the store's I/O: a call never waits on it.
    While the store cannot be reached, the breaker is a local one (one warning on the
    ``tidegate`` logger when it is lost, one when it is back). The open record lives until the
    open period plus a probe's bound; if nobody probed by then, the fleet starts closed again.

    ``clock`` is a zero-argument callable returning monotonic seconds, used instead of the
    process's monotonic clock (for tests; not with ``store``). Every bad argument is a
    ``ValueError`` or ``TypeError`` naming the parameter.

    This class is the state machine; ``tidegate.CircuitBreaker`` subclasses it and adds the
    ``with`` and decorator forms, logging on the ``tidegate`` logger (warning when opening,
    info otherwise) and listeners (``add_listener``). Use that one.
    """

    def __new__(
        cls,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        probe_timeout: float | None = None,
        success_threshold: int = 1,
        failure_rate: float | None = None,
        window: float = 60.0,
        minimum_calls: int = 10,
        max_reset_timeout: float | None = None,
        backoff: float = 2.0,
        exclude: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        fallback: Callable[..., Any] | None = None,
        clock: Callable[[], float] | None = None,
        store: str | None = None,
        poll_interval: float = 1.0,
    ) -> Self: ...
    def call(self, func: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run ``func(*args, **kwargs)`` through the breaker and return its result.

        Raises ``CircuitOpenError`` when refused (or returns ``fallback(*args, **kwargs)``);
        the function's own exceptions propagate after being counted.
        """

    def _enter(self) -> object:
        """Admit a ``with`` block: the admission to hand to ``_exit``, or ``CircuitOpenError``
        (``fallback`` cannot apply here). An admission garbage-collected before ``_exit``
        settles as neither success nor failure."""

    def _exit(self, ticket: object, exc: BaseException | None, /) -> None:
        """Settle what ``_enter`` admitted: a success when ``exc`` is None, otherwise counted
        as ``call`` counts an exception. ``ValueError`` for another breaker's admission."""

    def _announce(self, old: str, new: str, why: str, /) -> None:
        """Called after every transition with no lock held, with the old and new state and
        why (``"closed -> open (5 consecutive failures), next probe in 30s"``). Does nothing
        here; what it raises propagates from the call that caused the transition."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``; reading it takes a due open ->
        half-open step."""

    @property
    def retry_after(self) -> float:
        """Seconds until a probe is allowed; 0.0 unless open."""

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted since the last success or close."""

    @property
    def total_failures(self) -> int:
        """Calls that failed, over the breaker's life (late results included)."""

    @property
    def total_successes(self) -> int:
        """Calls that succeeded, over the breaker's life (late results included)."""

    @property
    def rejected(self) -> int:
        """Calls refused without running (a fallback answer counts too)."""

    @property
    def failure_threshold(self) -> int: ...
    @property
    def reset_timeout(self) -> float: ...
    @property
    def half_open_max_calls(self) -> int: ...
    @property
    def probe_timeout(self) -> float:
        """Seconds a probe may hold its slot, the default worked out."""

    @property
    def success_threshold(self) -> int: ...
    @property
    def failure_rate(self) -> float | None: ...
    @property
    def window(self) -> float: ...
    @property
    def minimum_calls(self) -> int: ...
    @property
    def max_reset_timeout(self) -> float | None: ...
    @property
    def backoff(self) -> float: ...
    @property
    def exclude(self) -> tuple[type[BaseException], ...]: ...
    @property
    def fallback(self) -> Callable[..., Any] | None: ...
    @property
    def store(self) -> str | None:
        """The store URI (its password hidden); ``None`` for a breaker of this process alone."""

    @property
    def poll_interval(self) -> float: ...
    def open(self) -> None:
        """Open by hand. A half-open breaker re-trips (backoff applies); an open one restarts
        its open period."""

    def close(self) -> None:
        """Close by hand and forget past failures. Calls still running are not counted
        against the new state."""

    def reset(self) -> None:
        """Same as ``close()``."""

@final
class MaintenanceSwitch:
    """Maintenance mode and drain for every request of a process, and across processes.

    Maintenance is on when this process enabled it (no state file), the environment variable
    is truthy (``1``, ``true``, ``yes``, ``on``; any case), or the state file says so.
    ``active`` costs an atomic load and a clock read; a request never touches the environment
    or the file. A background thread of the switch (it holds no GIL) re-reads the environment
    and stats the state file once per ``poll_interval``, re-reading the file only when it
    changed. A slow disk, a hung mount or a FIFO at the path stalls that thread, never a
    request. A process forked after the switch was built starts its own thread on its first
    read once a poll is overdue.

    The state file is JSON shared by every worker on the host::

        {"version": 1, "active": true, "message": "Upgrading", "until": "2030-01-01T12:00:00Z",
         "retry_after": 600, "draining": false, "updated_at": "2030-01-01T11:00:00Z"}

    Only ``active`` is required; unknown keys are ignored. While ``until`` is ahead,
    Retry-After counts down to it and ``retry_after`` is not used; ``retry_after`` applies once
    ``until`` has passed or when there is none. A missing file means off. An
    unreadable, empty, half-written or malformed file never raises: the last good state stands
    and one warning goes to the ``tidegate`` logger until the file reads well again. A file
    larger than 64 KiB is malformed; writers refuse to make one.
    """

    def __new__(
        cls,
        store: str | os.PathLike[str] | None = None,
        *,
        env_var: str | None = "MAINTENANCE_MODE",
        poll_interval: float = 1.0,
        default_retry_after: int = 60,
        state_file: str | os.PathLike[str] | None = None,
        _follow: bool = True,
    ) -> MaintenanceSwitch:
        """``store`` is a state file path (resolved to an absolute path now) or a Redis store
        URI: ``redis://[[user]:password@]host[:port][/db][?key=NAME]``, ``rediss://`` the same
        over TLS (``&ca=/path/to/ca.pem`` to trust a private CA instead of Mozilla's roots) or
        ``unix:///path/to/redis.sock[?key=NAME&db=N&password=P]``. With Redis the state lives
        at ``key`` (``tidegate:maintenance`` by default) in the same JSON form as the file;
        a background thread (no GIL) reads it once per ``poll_interval`` and at once when a
        writer announces a change, and records this process's heartbeat beside it
        (``<key>:seen:<host>:<pid>``, expiring after three intervals, at least 5 s). A store
        that cannot be reached leaves the last known state standing, with one warning when it
        is lost and one when it is back; every connect, read and write has a 1 s timeout.
        ``state_file=`` is the older name of ``store`` for a path. ``env_var=None`` ignores the
        environment; ``poll_interval`` is finite seconds >= 0 (the poller looks at most every
        10 ms, so 0 means as often as that);
        ``default_retry_after`` is whole seconds >= 0. Bad values raise ``ValueError`` or
        ``TypeError`` naming the parameter."""

    def enable(
        self,
        *,
        message: str | None = None,
        until: datetime | None = None,
        retry_after: int | timedelta | None = None,
        local: bool = False,
    ) -> None:
        """Turn maintenance on, with a message, an estimated end (a naive ``until`` is UTC) and
        an explicit Retry-After (a ``timedelta`` is rounded up to whole seconds).

        With a Redis store the key is replaced atomically (``WATCH``/``MULTI``) and a change
        notice published; ``ConnectionError`` (an ``OSError``) if the store cannot be written.
        With a state file the file is replaced atomically (``OSError`` if that fails): this
        switch sees the change at once, every other process within ``poll_interval``. A
        ``message`` that would make the file larger than the 64 KiB every reader accepts is a
        ``ValueError``, whichever side is written. Temporary files that writers killed
        mid-write left beside the state file are removed by the next write once they are a
        minute old.
        ``draining`` in the file is kept. Without a state file, or with ``local=True``, only
        this process changes and no file is written; this process's own maintenance outranks
        the file's (its message and Retry-After are the ones shown).
        """

    def disable(self, *, local: bool = False) -> None:
        """Turn maintenance off and clear its message, ``until`` and Retry-After, on the side
        ``enable`` with the same ``local`` would have used (the file's ``draining`` is kept).
        Maintenance the other side, or the environment, says stays on."""

    def _local_state(self) -> _LocalState:
        """This process's own maintenance, to put back with ``_restore_local`` (used by
        ``tidegate.pytest_plugin``; not public API)."""

    def _restore_local(self, saved: _LocalState, /) -> None:
        """Put back what ``_local_state`` returned; this process's own drain stays as it is."""

    def drain(self, *, local: bool = False) -> None:
        """Start draining: through the state file, so every process drains, or only this
        process when ``local`` is true or there is no state file. The file's maintenance
        fields are kept."""

    def undrain(self, *, local: bool = False) -> None:
        """Stop draining, on the side ``drain`` with the same ``local`` would have used."""

    @property
    def active(self) -> bool:
        """Whether requests should get the maintenance 503 now. Never raises."""

    @property
    def draining(self) -> bool:
        """Whether this process drains: its own drain, the state file's, or
        :func:`drain_process`. Never raises."""

    def status(self) -> MaintenanceStatus:
        """A consistent snapshot of the switch. Never raises."""

    @property
    def state_file(self) -> str | None:
        """The absolute path of the state file, if any (``None`` with a Redis store)."""

    @property
    def store(self) -> str | None:
        """The state file's path or the store's URI (its password hidden), if any."""

    def _fleet(self) -> str | None:
        """The heartbeats in a Redis store as a JSON array, ``None`` for a state file
        (used by the CLI; not public API). ``ConnectionError`` if the store cannot be read."""

    @property
    def env_var(self) -> str | None:
        """The environment variable that is looked at, if any."""

    @property
    def poll_interval(self) -> float:
        """Seconds between looks at the environment and the state file."""

    @property
    def default_retry_after(self) -> int:
        """Retry-After in seconds when nothing more precise is known."""

@final
class _LocalState:
    """Opaque: what ``MaintenanceSwitch._local_state`` saved."""

@final
class MaintenanceStatus:
    """A frozen snapshot of a ``MaintenanceSwitch``."""

    @property
    def active(self) -> bool:
        """Whether maintenance is on."""

    @property
    def message(self) -> str | None:
        """The message of the source that is on, if any."""

    @property
    def until(self) -> datetime | None:
        """The estimated end of maintenance, an aware UTC datetime (it may have passed)."""

    @property
    def retry_after(self) -> RetryAfter:
        """Delay-seconds: time left until ``until`` while that is ahead, else the explicit
        Retry-After given to ``enable``, else ``default_retry_after``. Never in the past."""

    @property
    def source(self) -> Literal["local", "env", "file"] | None:
        """What turned maintenance on (``local``, then ``file``, then ``env`` when several
        did), or ``None`` when off."""

    @property
    def draining(self) -> bool:
        """Whether the process drains."""
