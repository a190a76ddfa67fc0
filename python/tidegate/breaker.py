"""The circuit breaker users import: the native state machine, usable as a decorator too."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Callable, TypeVar

from tidegate._tidegate import CircuitBreaker as _NativeCircuitBreaker
from tidegate._tidegate import CircuitOpenError

if TYPE_CHECKING:
    from typing import ParamSpec

    P = ParamSpec("P")

R = TypeVar("R")

__all__ = ["CircuitBreaker", "CircuitOpenError"]


class CircuitBreaker(_NativeCircuitBreaker):
    """A circuit breaker around calls to one dependency.

    Three equivalent ways to protect a call::

        @breaker
        def fetch(): ...

        with breaker:
            ...

        breaker.call(fetch, *args, **kwargs)

    See ``tidegate._tidegate.CircuitBreaker`` for the options and the contract.
    """

    __slots__ = ()

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
