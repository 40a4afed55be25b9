"""The work ledger: where every accepted article is until it is terminal.

An article is in exactly one place: queued (in the per-tier ``Composer``),
suspect (held by an extractor that crashed while working on it), held by
one extractor, set aside (given back during shutdown, for the caller to
take back), or terminal. Every move between them goes through this object,
so "never lose an article, never record one twice" is one object's
invariant -- and property-tested without a thread in sight.

A result counts only from the extractor that holds the article: a late
answer from an extractor that was given up on, or a second result for the
same article, is refused. An article that keeps crashing extractors ends as
``poison`` after ``poison_after`` crashes; until then it goes out alone
(a *probe* batch), so its batch-mates are not blamed with it. The ids of
recently finished articles are remembered (a bounded, oldest-first memory)
so a quick re-submission of the same id is refused, not done twice.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from tierbatch.policies.articles import Article
from tierbatch.policies.composition import Batch, Composer, Queued
from tierbatch.policies.results import Failed, FailureReason, TerminalResult

# How many finished ids are remembered to refuse a quick re-submission.
RECENT_TERMINAL_IDS = 100_000


@dataclass(slots=True)
class Tallies:
    """What moved through the ledger, for stats. (Terminal results are
    counted once, downstream: ``policies.tally``.)"""

    submitted: int = 0
    requeued_after_crash: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    """What ``Ledger.finish`` made of an extractor's results."""

    accepted: tuple[TerminalResult, ...]
    refused: tuple[str, ...]  # late or duplicate: not held by that extractor
    served: tuple[int, ...] = ()  # the served tier of each accepted result


@dataclass(frozen=True, slots=True)
class Crash:
    """What ``Ledger.crash`` did with a dead extractor's articles."""

    poisoned: tuple[Failed, ...]
    suspects: int  # blamed, sent out alone next
    bystanders: int  # not blamed, back in their queues


class Ledger:
    """Owns the queues and every accepted article's whereabouts (see the
    module docstring)."""

    def __init__(
        self,
        queues: Composer,
        poison_after: int,
        *,
        recent_limit: int = RECENT_TERMINAL_IDS,
    ) -> None:
        if poison_after < 1:
            raise ValueError(f"poison_after must be >= 1, got {poison_after}")
        if recent_limit < 0:
            raise ValueError(f"recent_limit must be >= 0, got {recent_limit}")
        self._queues = queues
        self._tier_names = queues.ladder.names
        self._poison_after = poison_after
        self._recent_limit = recent_limit
        self._live: set[str] = set()  # queued, suspect or held: not yet terminal
        self._suspects: deque[Queued] = deque()
        self._probe_ids = itertools.count(-1, -1)  # probe batches: negative ids
        self._held: dict[str, tuple[int, Queued]] = {}
        self._held_by_tier = [0] * len(self._tier_names)  # by served tier
        self._by_extractor: dict[int, set[str]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._crashes: Counter[str] = Counter()
        self._returned: list[Article] = []
        self._shutting_down = False
        self.tallies = Tallies()

    # ---- where things are ---------------------------------------------------

    @property
    def queued(self) -> int:
        """Articles in the tier queues (suspects not included)."""
        return len(self._queues)

    @property
    def suspects(self) -> int:
        return len(self._suspects)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def held_by_tier(self) -> tuple[int, ...]:
        """Articles extractors hold, per served tier index."""
        return tuple(self._held_by_tier)

    @property
    def outstanding(self) -> int:
        """Articles accepted and not yet terminal nor handed back."""
        return len(self._queues) + len(self._suspects) + len(self._held)

    @property
    def set_aside(self) -> int:
        """Articles given back since ``begin_shutdown``, waiting for
        ``take_returned``."""
        return len(self._returned)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def queued_by_tier(self) -> dict[str, int]:
        return self._queues.depth_by_tier()

    def held_by(self, extractor: int) -> frozenset[str]:
        return frozenset(self._by_extractor.get(extractor, ()))

    def is_known(self, article_id: str) -> bool:
        """Not terminal yet, or finished recently: a new submission of the
        id is a duplicate."""
        return article_id in self._live or article_id in self._recent

    def has_work(self) -> bool:
        return bool(self._suspects) or len(self._queues) > 0

    # ---- moves ------------------------------------------------------------------

    def admit(
        self, article: Article, priority: float, now: float, tier: int | None = None
    ) -> Queued:
        """Queue a new article (the caller has checked ``is_known``), in
        ``tier`` or the one its priority gives."""
        item = self._queues.push(article, priority, now, tier)
        self._live.add(article.id)
        self.tallies.submitted += 1
        return item

    def take(self, extractor: int, now: float, held: Collection[int] = ()) -> Batch | None:
        """The next batch for ``extractor``, now held by it: a suspect alone
        if there is one, else a tier-mixed batch without the ``held`` tiers;
        None when nothing waits (or only held tiers' articles)."""
        if self._suspects:
            batch: Batch | None = Batch(next(self._probe_ids), (self._suspects.popleft(),))
        else:
            batch = self._queues.next_batch(now, held=held)
        if batch is None:
            return None
        ids = self._by_extractor.setdefault(extractor, set())
        for item in batch.items:
            self._held[item.article.id] = (extractor, item)
            self._held_by_tier[item.tier] += 1
            ids.add(item.article.id)
        return batch

    def finish(self, extractor: int, results: Iterable[TerminalResult]) -> Finish:
        """Record the results of articles ``extractor`` holds; refuse the others."""
        accepted: list[TerminalResult] = []
        refused: list[str] = []
        served: list[int] = []
        for result in results:
            held = self._held.get(result.article_id)
            if held is None or held[0] != extractor:
                refused.append(result.article_id)
                continue
            served.append(self._release(result.article_id, extractor).tier)
            self._settle(result)
            accepted.append(result)
        return Finish(tuple(accepted), tuple(refused), tuple(served))

    def give_back(self, extractor: int, ids: Iterable[str]) -> int:
        """Take back articles ``extractor`` holds and will not process: to
        their queues, or set aside once shutting down. Ids it does not hold
        are ignored. Returns how many were taken back."""
        items = [
            self._release(article_id, extractor)
            for article_id in ids
            if self._held.get(article_id, (None,))[0] == extractor
        ]
        if self._shutting_down:
            self._set_aside(items)
        else:
            self._queues.requeue(items)
        return len(items)

    def crash(self, extractor: int, blamed: frozenset[str], error: str) -> Crash:
        """``extractor`` died: what it held comes back. The articles it was
        handling (``blamed``) count a crash: poison at ``poison_after``,
        else suspects sent out alone; the rest are bystanders and simply
        go back to their queues."""
        ids = self._by_extractor.pop(extractor, set())
        poisoned: list[Failed] = []
        suspects: list[Queued] = []
        bystanders: list[Queued] = []
        for article_id in ids:
            _, item = self._held.pop(article_id)
            self._held_by_tier[item.tier] -= 1
            if article_id not in blamed:
                bystanders.append(item)
                continue
            self._crashes[article_id] += 1
            crashes = self._crashes[article_id]
            if crashes < self._poison_after:
                suspects.append(item)
                continue
            poison = Failed(
                article_id=article_id,
                reason=FailureReason.POISON,
                detail=f"held by {crashes} crashed extractors; last error: {error}",
                tier=self._tier_names[item.tier],
                attempts=crashes,
                metadata=item.article.metadata,
            )
            self._settle(poison)
            poisoned.append(poison)
        self.tallies.requeued_after_crash += len(suspects) + len(bystanders)
        suspects.sort(key=lambda item: (item.tier, item.seq))
        if self._shutting_down:
            self._set_aside(suspects + bystanders)
        else:
            self._suspects.extend(suspects)
            self._queues.requeue(bystanders)
        return Crash(tuple(poisoned), len(suspects), len(bystanders))

    def begin_shutdown(self) -> None:
        """From now on what extractors give back is set aside, not queued."""
        self._shutting_down = True

    def take_returned(self) -> list[Article]:
        """Hand back (and forget) every article not held by an extractor:
        set aside, suspect or queued. None of them is in a provider call."""
        articles = self._returned
        self._returned = []
        articles.extend(item.article for item in self._suspects)
        self._suspects.clear()
        articles.extend(item.article for item in self._queues.drain_all())
        for article in articles:
            self._live.discard(article.id)
        return articles

    def take_unfinished(self) -> list[Article]:
        """Empty the ledger: every article not terminal, held or not."""
        articles = self.take_returned()
        articles.extend(item.article for _, item in self._held.values())
        self._held.clear()
        self._held_by_tier = [0] * len(self._held_by_tier)
        self._by_extractor.clear()
        self._live.clear()
        return articles

    # ---- bookkeeping ------------------------------------------------------------

    def _release(self, article_id: str, extractor: int) -> Queued:
        _, item = self._held.pop(article_id)
        self._held_by_tier[item.tier] -= 1
        owned = self._by_extractor.get(extractor)
        if owned is not None:
            owned.discard(article_id)
        return item

    def _settle(self, result: TerminalResult) -> None:
        self._live.discard(result.article_id)
        self._crashes.pop(result.article_id, None)
        if self._recent_limit:
            self._recent[result.article_id] = None
            if len(self._recent) > self._recent_limit:
                self._recent.popitem(last=False)

    def _set_aside(self, items: list[Queued]) -> None:
        for item in items:
            self._live.discard(item.article.id)
            self._returned.append(item.article)
