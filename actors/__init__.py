"""The tierbatch runtime: three pykka actors and the ``Runtime`` facade.

Thin shells around the policy objects of ``tierbatch.policies``; every piece
of mutable state lives inside exactly one actor and changes only there.

The public names are the ones below (``__all__``): the ``Runtime`` and what
it reports, the ports an embedder implements (``Provider``, ``Sink``, and
``ModelCatalog`` for a models check), clocks, observers, and the runtime's
errors (the whole hierarchy is in ``tierbatch.policies``). Import them from
here; the actors, their messages and the other modules are internal.
"""

from tierbatch.actors.clock import Clock, ScaledClock, SystemClock
from tierbatch.actors.observer import FanOutObserver, NullObserver, RegistryObserver
from tierbatch.actors.ports import (
    ExtractionRequest,
    ModelCatalog,
    ModelInfo,
    ModelLookupError,
    PackAnswer,
    Provider,
    Sink,
    mark_request_sent,
)
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.actors.stats import RuntimeStats, SubmitReceipt
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

__all__ = [
    "ActorDiedError",
    "Clock",
    "CollectingSink",
    "ExtractionRequest",
    "ExtractorsKeepCrashingError",
    "FanOutObserver",
    "FatalProviderError",
    "ModelCatalog",
    "ModelInfo",
    "ModelLookupError",
    "NullObserver",
    "PackAnswer",
    "Provider",
    "QueueFullError",
    "RegistryObserver",
    "Runtime",
    "RuntimeFailureError",
    "RuntimeNotRunningError",
    "RuntimeStateError",
    "RuntimeStats",
    "ScaledClock",
    "ShuttingDownError",
    "Sink",
    "SubmitReceipt",
    "SystemClock",
    "TierbatchError",
    "mark_request_sent",
]
