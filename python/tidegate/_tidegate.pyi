"""Stubs for the native core. Their docstrings are the API reference."""

from collections.abc import Iterable, Iterator
from types import TracebackType

from typing_extensions import disjoint_base, final

__version__: str
__all__ = [
    "CapacityGate",
    "ClosingBody",
    "MiddlewareCore",
    "Permit",
    "RetryAfter",
    "__version__",
    "prefers_html",
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
        """

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
    """When a client may come back: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""

def prefers_html(accept: str) -> bool:
    """Whether an ``Accept`` header value ranks ``text/html`` above ``application/json``.

    Ties, an empty value and ``*/*`` go to JSON.
    """

@disjoint_base
class MiddlewareCore:
    """The per-request half of :class:`tidegate.wsgi.TideGateMiddleware`. Not for direct use."""

    def __new__(cls, *_args: object, **_kwargs: object) -> MiddlewareCore: ...
    def _configure(
        self,
        *,
        app: object,
        gate: CapacityGate | None,
        routes: dict[str, object],
        on_dependency: object,
        dependency_error: object,
        overload_status: str,
        overload_variants: list[tuple[list[tuple[str, str]], bytes, list[tuple[str, str]], bytes]],
    ) -> None: ...
    def __call__(self, environ: dict[str, object], start_response: object) -> Iterable[bytes]: ...

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
