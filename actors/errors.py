"""The runtime's errors, as their older module offered them.

They live in ``tierbatch.policies.errors`` (the whole hierarchy, with its
root ``TierbatchError``) and are exported by ``tierbatch.actors``. The names
without the ``Error`` ending are deprecated aliases, kept for code written
against earlier versions.
"""

from __future__ import annotations

from tierbatch.policies.errors import (
    ActorDiedError,
    ExtractorsKeepCrashingError,
    FatalProviderError,
    QueueFullError,
    RuntimeFailureError,
    RuntimeNotRunningError,
    RuntimeStateError,
    ShuttingDownError,
    TierbatchError,
)

# Deprecated aliases (the names of earlier versions).
QueueFull = QueueFullError
RuntimeNotRunning = RuntimeNotRunningError
ShuttingDown = ShuttingDownError
RuntimeFailure = RuntimeFailureError
ActorDied = ActorDiedError
ExtractorsKeepCrashing = ExtractorsKeepCrashingError

__all__ = [
    "ActorDied",
    "ActorDiedError",
    "ExtractorsKeepCrashing",
    "ExtractorsKeepCrashingError",
    "FatalProviderError",
    "QueueFull",
    "QueueFullError",
    "RuntimeFailure",
    "RuntimeFailureError",
    "RuntimeNotRunning",
    "RuntimeNotRunningError",
    "RuntimeStateError",
    "ShuttingDown",
    "ShuttingDownError",
    "TierbatchError",
]
