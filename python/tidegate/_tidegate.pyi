"""Stubs for the native core. Their docstrings are the API reference."""

from types import TracebackType

__version__: str

class CapacityGate:
    """A concurrency limit that sheds excess work at once.

    Admission is one atomic step, so no interleaving of threads ever has more than ``limit``
    permits out. Lowering ``limit`` evicts nobody; it stops admissions until enough permits
    come back.
    """

    def __init__(self, limit: int) -> None:
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

class RetryAfter:
    """When a client may come back: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
