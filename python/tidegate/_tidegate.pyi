"""Stubs for the native core. Their docstrings are the API reference."""

import os
from datetime import datetime, timedelta
from types import TracebackType
from typing import Literal, final

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

@final
class MaintenanceSwitch:
    """Maintenance mode and drain for every request of a process, and across processes.

    Maintenance is on when this process enabled it (no state file), the environment variable
    is truthy (``1``, ``true``, ``yes``, ``on``; any case), or the state file says so.
    ``active`` costs an atomic load and a clock read: at most once per ``poll_interval`` one
    caller re-reads the environment and stats the state file (re-reading it only when it
    changed); nobody waits for that caller.

    The state file is JSON shared by every worker on the host::

        {"version": 1, "active": true, "message": "Upgrading", "until": "2030-01-01T12:00:00Z",
         "retry_after": 600, "draining": false, "updated_at": "2030-01-01T11:00:00Z"}

    Only ``active`` is required; unknown keys are ignored. A missing file means off. An
    unreadable, empty, half-written or malformed file never raises: the last good state stands
    and one warning goes to the ``tidegate`` logger until the file reads well again.
    """

    def __new__(
        cls,
        state_file: str | os.PathLike[str] | None = None,
        *,
        env_var: str | None = "MAINTENANCE_MODE",
        poll_interval: float = 1.0,
        default_retry_after: int = 60,
    ) -> MaintenanceSwitch:
        """``state_file`` is resolved to an absolute path now; ``env_var=None`` ignores the
        environment; ``poll_interval`` is finite seconds >= 0 (0 looks every time);
        ``default_retry_after`` is whole seconds >= 0. Bad values raise ``ValueError`` or
        ``TypeError`` naming the parameter."""

    def enable(
        self,
        *,
        message: str | None = None,
        until: datetime | None = None,
        retry_after: int | timedelta | None = None,
    ) -> None:
        """Turn maintenance on, with a message, an estimated end (a naive ``until`` is UTC) and
        an explicit Retry-After (a ``timedelta`` is rounded up to whole seconds).

        With a state file the file is replaced atomically (``OSError`` if that fails): this
        switch sees the change at once, every other process within ``poll_interval``.
        ``draining`` in the file is kept. Without a state file only this process changes.
        """

    def disable(self) -> None:
        """Turn maintenance off and clear its message, ``until`` and Retry-After (the file's
        ``draining`` is kept)."""

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
        """Whether this process drains: its own drain or the state file's. Never raises."""

    def status(self) -> MaintenanceStatus:
        """A consistent snapshot of the switch. Never raises."""

    @property
    def state_file(self) -> str | None:
        """The absolute path of the state file, if any."""

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
