"""The circuit breaker users import.

The state machine, the clock and ``call`` are native (``tidegate._tidegate.CircuitBreaker``).
This subclass adds what belongs to Python: logging each transition, the listeners, the
decorator form, and the ``with`` form, whose admissions are kept per context (thread,
greenlet or task) in a ``ContextVar``. A call that does not change the state never runs any
of this Python code.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Literal, TypeVar

from tidegate._tidegate import CircuitBreaker as _NativeCircuitBreaker
from tidegate._tidegate import CircuitOpenError

if TYPE_CHECKING:
    from typing import ParamSpec

    from typing_extensions import Self

    P = ParamSpec("P")

R = TypeVar("R")
L = TypeVar("L", bound=Callable[..., object])

__all__ = ["CircuitBreaker", "CircuitOpenError"]

_LOGGER = logging.getLogger("tidegate")
#: Held while a breaker's listeners are replaced; reading them needs no lock.
_LISTENERS_LOCK = threading.Lock()

#: The admissions of the ``with`` blocks open in the current context, innermost last, each
#: with the breaker that gave it.
_ACTIVE: ContextVar[tuple[tuple[CircuitBreaker, object], ...]] = ContextVar(
    "tidegate_breaker_calls", default=()
)


class CircuitBreaker(_NativeCircuitBreaker):
    """A circuit breaker around calls to one dependency.

    Three equivalent ways to protect a call::

        @breaker
        def fetch(): ...

        with breaker:
            ...

        breaker.call(fetch, *args, **kwargs)

    Transitions are logged on the ``tidegate`` logger (warning when opening, info otherwise)
    and passed to listeners (see ``add_listener``). With ``store="redis://..."`` breakers of
    the same name share their state across processes and hosts (a trip anywhere opens them
    all within ``poll_interval``; half-open probes are bounded across the fleet); a call never
    waits on the store, and without it each goes on locally. See
    ``tidegate._tidegate.CircuitBreaker`` for the options and the state machine.
    """

    # Replaced whole, never changed in place, so a transition reads it without a lock; unset
    # until the first listener comes (the native __new__ takes the options, and an __init__
    # here would hide their types).
    __slots__ = ("_listeners",)

    _listeners: tuple[Callable[..., object], ...]

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``func`` so every call goes through the breaker (``call``)."""
        if not callable(func):
            raise TypeError(f"func: must be callable, got {func!r}")
        if inspect.iscoroutinefunction(func):
            # The coroutine would be counted a success the moment it is created.
            raise TypeError(f"func: coroutine functions are not supported, got {func!r}")

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.call(func, *args, **kwargs)

        return guarded

    def __enter__(self) -> Self:
        """Admit the block or raise ``CircuitOpenError`` (``fallback`` cannot apply here).

        The same breaker may be entered by many threads, greenlets or tasks at once; each
        ``__exit__`` settles the admission its own context made.
        """
        ticket = self._enter()
        _ACTIVE.set((*_ACTIVE.get(), (self, ticket)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> Literal[False]:
        """Count the block's outcome. Never suppresses the exception."""
        stack = _ACTIVE.get()
        for index in range(len(stack) - 1, -1, -1):
            if stack[index][0] is self:
                break
        else:
            raise RuntimeError(
                f"circuit breaker '{self.name}': __exit__ without a matching __enter__ in "
                "this context"
            )
        _ACTIVE.set(stack[:index] + stack[index + 1 :])
        self._exit(stack[index][1], exc)
        return False

    def add_listener(self, listener: L, /) -> L:
        """Call ``listener(breaker, old_state, new_state)`` after every transition, from the
        thread that caused it, with no lock held. Returns ``listener`` (usable as a
        decorator).

        A listener is for observing: one raising an ``Exception`` is logged on the
        ``tidegate`` logger (with its traceback) and the next listener runs. Any other
        ``BaseException`` (``KeyboardInterrupt``) propagates from the call that caused the
        transition, but only once the breaker is consistent: a call admitted as that
        transition happened does not run and gives its probe slot back."""
        if not callable(listener):
            raise TypeError(f"listener: must be callable, got {listener!r}")
        with _LISTENERS_LOCK:
            self._listeners = (*self._registered(), listener)
        return listener

    def remove_listener(self, listener: Callable[..., object], /) -> None:
        """Forget a listener (compared with ``==``); ``ValueError`` if it is not registered."""
        # Compared outside the lock (an __eq__ may do anything), and with ==: bound methods
        # are equal, never identical.
        found = next((known for known in self._registered() if known == listener), None)
        with _LISTENERS_LOCK:
            registered = self._registered()
            index = next((i for i, known in enumerate(registered) if known is found), None)
            if found is not None and index is not None:
                self._listeners = registered[:index] + registered[index + 1 :]
                return
        raise ValueError(f"listener: not registered: {listener!r}")

    def _registered(self) -> tuple[Callable[..., object], ...]:
        return getattr(self, "_listeners", ())

    def _announce(self, old: str, new: str, why: str, /) -> None:
        """Log a transition and tell the listeners; the native core calls this after every
        state change, with no lock held."""
        level = logging.WARNING if new == "open" else logging.INFO
        _LOGGER.log(level, "circuit breaker %r: %s", self.name, why)
        for listener in self._registered():
            try:
                listener(self, old, new)
            except Exception as exc:
                _LOGGER.error(
                    "circuit breaker %r: listener %r raised", self.name, listener, exc_info=exc
                )
