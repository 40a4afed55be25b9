"""Messages between the actors: plain frozen data, so the same protocol can
run over pykka threads today and Ray actors tomorrow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tierbatch.actors.ports import PackAnswer
from tierbatch.policies.articles import Article
from tierbatch.policies.backlog import TierBacklog
from tierbatch.policies.composition import Batch
from tierbatch.policies.grounding import GroundingCounts
from tierbatch.policies.outcomes import CallOutcome
from tierbatch.policies.quota import Grant, OutstandingGrant
from tierbatch.policies.results import TerminalResult

# ---- ModelRegistry -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquire:
    """Ask for quota on the first model of ``chain`` that has some.

    The registry answers through ``reply`` exactly once, with ``Granted`` or
    ``AcquireFailed`` -- unless it is withdrawn first (``Withdraw``).
    ``tier_rank`` (0 = highest tier) and ``enqueued_at`` order the waiters;
    ``tier`` names the tier for the dispatch plan's allowances; ``deadline``
    (steady clock time) bounds the wait.
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
    tier: str = ""


@dataclass(frozen=True, slots=True)
class Withdraw:
    """The holder no longer needs a waiting request (its articles were merged
    into another pack): drop it without an answer. One already granted is
    answered as usual; the holder then reports it ``Cancelled``."""

    request_id: int
    holder: int


@dataclass(frozen=True, slots=True)
class Backlog:
    """The composer's view of the work ahead, sent to the registry when it
    changes enough to matter; the registry replans from it."""

    tiers: tuple[TierBacklog, ...]


@dataclass(frozen=True, slots=True)
class Granted:
    request_id: int
    grant: Grant


@dataclass(frozen=True, slots=True)
class AcquireFailed:
    """``reason`` is "expired" (deadline passed), "no_route", or "stopped"
    (the registry stopped granting: the runtime is shutting down or failed,
    so the pack is given back, not failed)."""

    request_id: int
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    grant_id: int
    outcome: CallOutcome


@dataclass(frozen=True, slots=True)
class Sent:
    """The request of a grant actually left at ``at`` (steady clock time),
    carrying ``tokens`` estimated input tokens (0: what was granted) -- less
    than granted when the room it reserved for merging waiting packs was
    not all used, which is then free at once."""

    grant_id: int
    at: float
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class ReleaseHolder:
    """A holder (an extractor) is gone: drop its waits, abandon its grants."""

    holder: int


@dataclass(frozen=True, slots=True)
class AdoptGrants:
    """A holder's grants from an owner of the shared quota that died, handed
    to the registry that took over: each keeps its id and window place, and
    its ``Report`` is accounted here (``QuotaPolicy.adopt``)."""

    holder: int
    grants: tuple[OutstandingGrant, ...]


@dataclass(frozen=True, slots=True)
class StopGranting:
    """Shutting down: answer every waiter "stopped" and every later request
    too. Reports of calls still in flight are still accounted for."""


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


@dataclass(frozen=True, slots=True)
class GetBudgetState:
    """The daily budget as of now (``BudgetState``; None without a budget)."""


@dataclass(frozen=True, slots=True)
class GetPlan:
    """The dispatch plan in force (None before the first one)."""


@dataclass(frozen=True, slots=True)
class CommitBatch:
    """A batch job is about to be created: commit its estimated cost to the
    daily budget before it is. Answered with how many of its requests (the
    first ones) the day can pay for -- every one without a budget; 0: none,
    the job waits. ``request_tokens`` are each request's estimated input
    tokens; ``discount`` the Batch API's share of the interactive price."""

    job_id: str
    tier: str
    model: str
    request_tokens: tuple[int, ...]
    discount: float


@dataclass(frozen=True, slots=True)
class SettleBatch:
    """A batch job is over: it cost ``usd`` (0: its articles went back).
    ``submitted_at`` (wall clock) dates a job the budget never committed."""

    job_id: str
    tier: str
    usd: float
    submitted_at: float


# ---- BatchComposer -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """``observe`` False: the clusters of these articles were already
    counted through ``ObserveClusters``."""

    articles: tuple[Article, ...]
    observe: bool = True


@dataclass(frozen=True, slots=True)
class Classify:
    """The tier name of each article, as ``Submit`` would tier it, without
    queueing it (a daemon routes a batch tier's articles elsewhere this
    way); ``observe``: count them towards their clusters' hotness, as
    ``Submit`` does."""

    articles: tuple[Article, ...]
    observe: bool = True


@dataclass(frozen=True, slots=True)
class SeedTiers:
    """Count the priorities of articles that will arrive later towards the
    tier shares, before any of them is submitted (a one-shot run seeds its
    whole input, so its split is exact). ``observe`` as for ``Submit``."""

    articles: tuple[Article, ...]
    observe: bool = False


@dataclass(frozen=True, slots=True)
class GetTierSplit:
    """How the seeded articles fall into the tiers (answered with a
    ``TierSplit``); seeding is over after it."""


@dataclass(frozen=True, slots=True)
class GetTierThresholds:
    """Every tier's ``min_priority`` now (answered with a ``TierSplit``
    whose counts are 0: only thresholds and the window's fill)."""


@dataclass(frozen=True, slots=True)
class ObserveClusters:
    """Count articles towards their clusters' hotness without queueing them
    (a daemon warms the statistics from its whole backlog this way)."""

    observations: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class BacklogElsewhere:
    """How many articles wait outside the runtime (a daemon's store), and how
    fast they arrive there, so the dispatch plan counts them; their tiers are
    estimated from what was submitted so far."""

    articles: int
    arrivals_per_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RequestWork:
    """An extractor has room for another batch; answered with ``WorkBatch``
    when there is work (possibly much later)."""

    extractor: int
    reply: Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class WorkBatch:
    """A batch to work on; ``pack_sizes`` are the adaptive tiers' pack
    sizes now, (tier name, articles) -- the extractor packs no more."""

    batch: Batch
    pack_sizes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class PackChecked:
    """An answered request's grounding outcomes (``policies.pack_quality``)."""

    tier: str
    model: str
    pack_size: int
    counts: GroundingCounts


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
    """Stop dispatching (a fatal error): pending drain and space waiters are
    answered False, so nobody waits for a queue that will not move."""

    reason: str


@dataclass(frozen=True, slots=True)
class BeginShutdown:
    """Stop dispatching for good. From now on articles that extractors give
    back are kept aside for ``TakeReturned`` instead of being queued again,
    and a drain waits only for what extractors still hold."""


@dataclass(frozen=True, slots=True)
class TakeReturned:
    """Hand back (and forget) every article queued, suspect, or given back
    since ``BeginShutdown``: none of them is in a provider call."""


@dataclass(frozen=True, slots=True)
class TakeUnfinished:
    """Stop dispatching and hand back every article not yet terminal."""


@dataclass(frozen=True, slots=True)
class GetComposerStats:
    pass


# ---- Extractor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallDone:
    """A provider call ended, whatever became of it (see ``actors.calls``)."""

    pack_id: int
    grant: Grant
    answer: PackAnswer


@dataclass(frozen=True, slots=True)
class Quiesce:
    """The runtime failed: stop asking for work, cancel the calls in flight
    and give back everything held."""


@dataclass(frozen=True, slots=True)
class WindDown:
    """Shutting down: stop asking for work and start no new call; give back
    at once every pack not in a provider call; when a call in flight ends,
    finish what succeeded and give back the rest instead of retrying."""
