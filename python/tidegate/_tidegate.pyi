"""Stubs for the native core. Their docstrings are the API reference."""

from datetime import datetime, timedelta
from types import TracebackType

from typing_extensions import final

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
