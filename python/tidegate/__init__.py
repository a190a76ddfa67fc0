"""tidegate: answer 503 Service Unavailable the right way.

Shed load a process cannot carry, go into maintenance without a restart, fail fast when a
dependency is down, drain during deploys, and always say when to come back (``Retry-After``).
"""

from tidegate._tidegate import (
    AdaptiveGate,
    CapacityGate,
    MaintenanceStatus,
    MaintenanceSwitch,
    Permit,
    RetryAfter,
    __version__,
    drain_process,
    process_draining,
    undrain_process,
)
from tidegate.breaker import CircuitBreaker, CircuitOpenError
from tidegate.health import HealthChecks

__all__ = [
    "AdaptiveGate",
    "CapacityGate",
    "CircuitBreaker",
    "CircuitOpenError",
    "HealthChecks",
    "MaintenanceStatus",
    "MaintenanceSwitch",
    "Permit",
    "RetryAfter",
    "__version__",
    "drain_process",
    "process_draining",
    "undrain_process",
]
