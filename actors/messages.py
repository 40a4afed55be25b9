"""Messages between the actors: plain frozen data, so the same protocol can
run over pykka threads today and Ray actors tomorrow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tierbatch.actors.ports import PackAnswer
from tierbatch.policies.articles import Article
from tierbatch.policies.composition import Batch
from tierbatch.policies.outcomes import CallOutcome
from tierbatch.policies.quota import Grant
from tierbatch.policies.results import TerminalResult

# ---- ModelRegistry -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquire:
    """Ask for quota on the first model of ``chain`` that has some.

    The registry answers through ``reply`` exactly once, with ``Granted`` or
    ``AcquireFailed``. ``tier_rank`` (0 = highest tier) and ``enqueued_at``
    order the waiters; ``deadline`` (steady clock time) bounds the wait.
    """

    request_id: int
    holder: int
    chain: tuple[str, ...]
    est_tokens: int
    tier_rank: int
    enqueued_at: float
    reply: Callable[[Any], None]
    deadline: float | None = None
    patience_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Granted:
    request_id: int
    grant: Grant


@dataclass(frozen=True, slots=True)
class AcquireFailed:
    """``reason`` is "expired" (deadline passed) or "no_route"."""

    request_id: int
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    grant_id: int
    outcome: CallOutcome


@dataclass(frozen=True, slots=True)
class Sent:
    """The request of a grant actually left at ``at`` (steady clock time)."""

    grant_id: int
    at: float


@dataclass(frozen=True, slots=True)
class ReleaseHolder:
    """A holder (an extractor) is gone: drop its waits, abandon its grants."""

    holder: int


@dataclass(frozen=True, slots=True)
class Wake:
    """The registry's timer fired; ``generation`` tells stale timers apart."""

    generation: int


@dataclass(frozen=True, slots=True)
class GetQuotaStatus:
    pass


@dataclass(frozen=True, slots=True)
class GetQuotaSnapshot:
    pass


# ---- BatchComposer -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """``observe`` False: the clusters of these articles were already
    counted through ``ObserveClusters``."""

    articles: tuple[Article, ...]
    observe: bool = True


@dataclass(frozen=True, slots=True)
class ObserveClusters:
    """Count articles towards their clusters' hotness without queueing them
    (a daemon warms the statistics from its whole backlog this way)."""

    observations: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class RequestWork:
    """An extractor has room for another batch; answered with ``WorkBatch``
    when there is work (possibly much later)."""

    extractor: int
    reply: Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class WorkBatch:
    batch: Batch


@dataclass(frozen=True, slots=True)
class Finished:
    """Terminal results from an extractor; the composer records each once."""

    extractor: int
    results: tuple[TerminalResult, ...]


@dataclass(frozen=True, slots=True)
class GiveBack:
    """An extractor returns articles it will not process (stop, fatal error)."""

    extractor: int
    article_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExtractorDied:
    """``blamed`` are the articles the extractor was working on when it
    died; only they count a crash towards poison."""

    extractor: int
    error: str
    blamed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WhenDrained:
    pass


@dataclass(frozen=True, slots=True)
class WhenSpace:
    pass


@dataclass(frozen=True, slots=True)
class Pause:
    reason: str


@dataclass(frozen=True, slots=True)
class TakeUnfinished:
    """Stop dispatching and hand back every article not yet terminal."""


@dataclass(frozen=True, slots=True)
class GetComposerStats:
    pass


# ---- Extractor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallDone:
    pack_id: int
    grant: Grant
    answer: PackAnswer
    started_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class Quiesce:
    """Stop asking for work; cancel what is held and give it back."""


@dataclass(frozen=True, slots=True)
class GetExtractorStats:
    pass
