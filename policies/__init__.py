"""Pure logic and domain types of tierbatch.

Nothing here reads a clock, starts a thread or touches I/O: every decision
that depends on time takes ``now`` as a parameter, so the same objects run
unchanged inside pykka actors, inside Ray actors, and inside hypothesis state
machines. Calendar logic (priority's publication times, the quota's day) is
on wall-clock epoch seconds; the quota's windows and deadlines are on steady
time, with the wall clock's offset passed in where a day is needed.

The public names are the ones below (``__all__``): the domain types an
embedder builds and reads (articles, config, results, call outcomes for a
``Provider``, the result counts) and every error. Import them from here;
the modules themselves (``tierbatch.policies.quota`` ...) are internal and
may change between versions.
"""

from tierbatch.policies.articles import Article
from tierbatch.policies.config import (
    ComposerConfig,
    Config,
    GroundingConfig,
    LimiterMode,
    ModelSpec,
    PriorityConfig,
    ProviderConfig,
    ProviderKind,
    ProviderLimiter,
    QuotaConfig,
    RetryConfig,
    RuntimeConfig,
    SimulatedLimits,
    SimulationConfig,
    TierSpec,
)
from tierbatch.policies.config_parsing import parse_config
from tierbatch.policies.errors import (
    ActorDiedError,
    ConfigError,
    ExtractorsKeepCrashingError,
    FatalProviderError,
    ProviderError,
    QueueFullError,
    RuntimeFailureError,
    RuntimeNotRunningError,
    RuntimeStateError,
    ShuttingDownError,
    SnapshotError,
    StorageError,
    TierbatchError,
    UnknownModelError,
)
from tierbatch.policies.grounding import (
    Grounding,
    GroundingAction,
    GroundingCounts,
    GroundingPolicy,
)
from tierbatch.policies.local_calendar import UnknownTimeZoneError
from tierbatch.policies.outcomes import (
    Abandoned,
    AuthFailed,
    BadRequest,
    CallOutcome,
    Cancelled,
    ModelNotFound,
    RateLimited,
    RateLimitScope,
    ServerError,
    Succeeded,
    TimedOut,
    Usage,
)
from tierbatch.policies.pack_quality import GroundingRow
from tierbatch.policies.quota import Grant, ModelStatus
from tierbatch.policies.results import (
    AnswerProblem,
    ArticleAnswer,
    Done,
    Entity,
    EntityType,
    Extraction,
    Failed,
    FailureReason,
    ProblemKind,
    TerminalResult,
)
from tierbatch.policies.tally import TallySnapshot, TierModelCount

__all__ = [
    "Abandoned",
    "ActorDiedError",
    "AnswerProblem",
    "Article",
    "ArticleAnswer",
    "AuthFailed",
    "BadRequest",
    "CallOutcome",
    "Cancelled",
    "ComposerConfig",
    "Config",
    "ConfigError",
    "Done",
    "Entity",
    "EntityType",
    "Extraction",
    "ExtractorsKeepCrashingError",
    "Failed",
    "FailureReason",
    "FatalProviderError",
    "Grant",
    "Grounding",
    "GroundingAction",
    "GroundingConfig",
    "GroundingCounts",
    "GroundingPolicy",
    "GroundingRow",
    "LimiterMode",
    "ModelNotFound",
    "ModelSpec",
    "ModelStatus",
    "PriorityConfig",
    "ProblemKind",
    "ProviderConfig",
    "ProviderError",
    "ProviderKind",
    "ProviderLimiter",
    "QueueFullError",
    "QuotaConfig",
    "RateLimitScope",
    "RateLimited",
    "RetryConfig",
    "RuntimeConfig",
    "RuntimeFailureError",
    "RuntimeNotRunningError",
    "RuntimeStateError",
    "ServerError",
    "ShuttingDownError",
    "SimulatedLimits",
    "SimulationConfig",
    "SnapshotError",
    "StorageError",
    "Succeeded",
    "TallySnapshot",
    "TerminalResult",
    "TierModelCount",
    "TierSpec",
    "TierbatchError",
    "TimedOut",
    "UnknownModelError",
    "UnknownTimeZoneError",
    "Usage",
    "parse_config",
]
