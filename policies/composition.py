"""The BatchComposer's pure core: per-tier queues and tier-mixed batches.

Slots in a batch are shared out by deficit round robin weighted by the mix.
Each batch credits every tier that has work ``size * weight / total_weight``
slots; credits are kept as integers scaled by ``total_weight``, so fractions
carry over exactly and the long-run shares equal the mix even when ``size``
is not the sum of the weights. Slots go one at a time to the tier with the
most credit (ties: the higher tier), each costing one whole slot of credit;
when every tier has enough work and ``size`` is the sum of the weights, this
gives each tier exactly its weight in every batch. Slots no tier is entitled
to, because the entitled tiers ran out of work, go to the other tiers in
priority order (highest tier first) without touching their credit, so a batch
is never short while work waits. A tier with nothing queued keeps no positive
credit (as in DRR, credit does not pile up while idle), and a tier of weight
0 is only ever served with such leftover slots.

Aging: an article that has waited more than ``aging_s`` in tier ``k > 0`` is
moved, once, to tier ``k - 1``; there it is served before the tier's own
articles, oldest first, so a crowded high tier cannot starve it. Each tier
keeps a heap by arrival time beside its priority heap; entries are deleted
lazily (an entry knows whether it is still waiting) and the heaps are
compacted when stale rows outnumber live ones, so a batch costs
``O(size * (tiers + log n))`` plus ``O(log n)`` per article aged.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum

from tierbatch.policies.articles import Article
from tierbatch.policies.errors import TierbatchError
from tierbatch.policies.tiers import TierLadder

# A heap only compacts once it holds this many rows beyond twice its live ones.
_COMPACT_SLACK = 64


@dataclass(frozen=True, slots=True)
class Queued:
    """An article waiting in (or taken from) the composer.

    ``tier`` is the index it is served as, ``base_tier`` the index its priority
    gives; ``tier != base_tier`` means it was aged (promoted after waiting).
    ``seq`` is the global arrival order; a requeued item keeps its
    ``enqueued_at`` and ``seq`` so it does not lose its place in line.
    """

    article: Article
    priority: float
    tier: int
    base_tier: int
    enqueued_at: float
    seq: int

    @property
    def aged(self) -> bool:
        return self.tier != self.base_tier


@dataclass(frozen=True, slots=True)
class Batch:
    """Articles for one extractor request, grouped by the tier they are served as."""

    batch_id: int
    items: tuple[Queued, ...]

    def __len__(self) -> int:
        return len(self.items)

    def by_tier(self) -> dict[int, tuple[Queued, ...]]:
        """Items per served tier index, each in the order they were picked."""
        groups: dict[int, list[Queued]] = {}
        for item in self.items:
            groups.setdefault(item.tier, []).append(item)
        return {tier: tuple(items) for tier, items in groups.items()}


class AlreadyQueuedError(TierbatchError, ValueError):
    """The article id is already waiting in the composer."""

    def __init__(self, article_id: str) -> None:
        super().__init__(f"article {article_id!r} is already queued")
        self.article_id = article_id


class _State(Enum):
    WAITING = "waiting"  # in its tier's priority and arrival heaps
    AGED = "aged"  # in the aged heap of the tier it was promoted to
    GONE = "gone"  # emitted, removed or drained: every row left is stale


class _Entry:
    """One enqueueing of one article. Never reused: a requeue makes a new one,
    so stale heap rows can never come back to life."""

    __slots__ = ("item", "state")

    def __init__(self, item: Queued, state: _State) -> None:
        self.item = item
        self.state = state


# (primary key, seq, unique tiebreak, entry): the tiebreak keeps entries from
# ever being compared, even if two restored items share a seq.
_Row = tuple[float, int, int, _Entry]


def _compacted(rows: list[_Row], state: _State, live: int) -> list[_Row]:
    if len(rows) <= 2 * live + _COMPACT_SLACK:
        return rows
    kept = [row for row in rows if row[3].state is state]
    heapq.heapify(kept)
    return kept


class _TierQueue:
    """The queues of one tier: aged items first (oldest first), then waiting
    items by priority (older first on ties)."""

    __slots__ = ("by_arrival", "by_priority", "credit", "n_aged", "n_waiting", "promoted")

    def __init__(self) -> None:
        self.by_priority: list[_Row] = []
        self.by_arrival: list[_Row] = []  # waiting items, for aging; unused in tier 0
        self.promoted: list[_Row] = []  # aged items served here
        self.n_waiting = 0
        self.n_aged = 0
        self.credit = 0  # slots owed, scaled by the total mix weight

    def __len__(self) -> int:
        return self.n_waiting + self.n_aged

    def add(self, entry: _Entry, uid: int, track_arrival: bool) -> None:
        item = entry.item
        if entry.state is _State.AGED:
            heapq.heappush(self.promoted, (item.enqueued_at, item.seq, uid, entry))
            self.n_aged += 1
            return
        heapq.heappush(self.by_priority, (-item.priority, item.seq, uid, entry))
        if track_arrival:
            heapq.heappush(self.by_arrival, (item.enqueued_at, item.seq, uid, entry))
        self.n_waiting += 1

    def discard(self, entry: _Entry) -> None:
        """Account for ``entry`` leaving; its rows go stale."""
        if entry.state is _State.AGED:
            self.n_aged -= 1
        else:
            self.n_waiting -= 1
        entry.state = _State.GONE

    def pop_next(self) -> _Entry:
        while self.promoted:
            entry = heapq.heappop(self.promoted)[3]
            if entry.state is _State.AGED:
                return entry
        while self.by_priority:
            entry = heapq.heappop(self.by_priority)[3]
            if entry.state is _State.WAITING:
                return entry
        raise LookupError("pop_next on an empty tier queue")  # callers check len first

    def pop_overdue(self, now: float, aging_s: float) -> _Entry | None:
        """The oldest waiting entry if it has waited more than ``aging_s``."""
        while self.by_arrival:
            entry = self.by_arrival[0][3]
            if entry.state is not _State.WAITING:
                heapq.heappop(self.by_arrival)
                continue
            if now - entry.item.enqueued_at > aging_s:
                heapq.heappop(self.by_arrival)
                return entry
            return None
        return None

    def compact(self) -> None:
        self.by_priority = _compacted(self.by_priority, _State.WAITING, self.n_waiting)
        self.by_arrival = _compacted(self.by_arrival, _State.WAITING, self.n_waiting)
        self.promoted = _compacted(self.promoted, _State.AGED, self.n_aged)

    def clear(self) -> None:
        self.by_priority.clear()
        self.by_arrival.clear()
        self.promoted.clear()
        self.n_waiting = 0
        self.n_aged = 0


class Composer:
    """Per-tier queues that emit tier-mixed batches on demand.

    Every article pushed (or requeued) is emitted exactly once unless it is
    removed or drained; an article id can wait only once at a time.
    """

    def __init__(self, ladder: TierLadder, mix: Mapping[str, int], aging_s: float) -> None:
        unknown = sorted(set(mix) - set(ladder.names))
        if unknown:
            raise ValueError(f"mix names unknown tiers: {', '.join(unknown)}")
        negative = sorted(name for name, weight in mix.items() if weight < 0)
        if negative:
            raise ValueError(f"mix weights must be >= 0: {', '.join(negative)}")
        weights = tuple(int(mix.get(name, 0)) for name in ladder.names)
        if sum(weights) <= 0:
            raise ValueError("the mix needs at least one tier with a positive weight")
        if math.isnan(aging_s) or aging_s < 0:
            raise ValueError(f"aging_s must be >= 0 (inf disables aging), got {aging_s!r}")
        self._ladder = ladder
        self._weights = weights
        self._total_weight = sum(weights)
        self._aging_s = aging_s
        self._tiers = tuple(_TierQueue() for _ in weights)
        self._live: dict[str, _Entry] = {}
        self._next_seq = 0
        self._uids = itertools.count()
        self._next_batch_id = 1

    @property
    def ladder(self) -> TierLadder:
        return self._ladder

    @property
    def batch_size(self) -> int:
        """The default batch size: the sum of the mix weights."""
        return self._total_weight

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, article_id: object) -> bool:
        return article_id in self._live

    def depth_by_tier(self) -> dict[str, int]:
        """Articles waiting per tier name, counted where they will be served."""
        return {name: len(tq) for name, tq in zip(self._ladder.names, self._tiers, strict=True)}

    # -- putting work in -------------------------------------------------

    def push(
        self, article: Article, priority: float, now: float, tier: int | None = None
    ) -> Queued:
        """Queue a new article in ``tier``, by default the tier its priority
        gives on the ladder (a ladder with shares passes the tier it ranked)."""
        if math.isnan(priority):
            raise ValueError(f"article {article.id!r}: priority is NaN")
        if article.id in self._live:
            raise AlreadyQueuedError(article.id)
        if tier is None:
            tier = self._ladder.index_for(priority)
        elif not 0 <= tier < len(self._tiers):
            raise ValueError(f"article {article.id!r}: tier {tier} outside the ladder")
        item = Queued(article, priority, tier, tier, now, self._next_seq)
        self._insert(item)
        return item

    def push_queued(self, item: Queued) -> None:
        """Queue an item as it is (e.g. restored from a durable queue)."""
        if item.article.id in self._live:
            raise AlreadyQueuedError(item.article.id)
        self._validate(item)
        self._insert(item)

    def requeue(self, items: Iterable[Queued]) -> int:
        """Put back items an extractor held but did not finish.

        They keep their tier, ``enqueued_at`` and ``seq``. An item whose
        article is already waiting is skipped, so requeueing twice cannot
        duplicate work. Returns how many were put back.
        """
        count = 0
        for item in items:
            if item.article.id in self._live:
                continue
            self._validate(item)
            self._insert(item)
            count += 1
        return count

    def _validate(self, item: Queued) -> None:
        levels = len(self._tiers)
        if not (0 <= item.tier <= item.base_tier < levels):
            raise ValueError(
                f"article {item.article.id!r}: tier {item.tier} / base tier {item.base_tier}"
                f" do not fit a ladder of {levels} tiers"
            )
        if math.isnan(item.priority):
            raise ValueError(f"article {item.article.id!r}: priority is NaN")

    def _insert(self, item: Queued) -> None:
        entry = _Entry(item, _State.AGED if item.aged else _State.WAITING)
        self._tiers[item.tier].add(entry, next(self._uids), track_arrival=item.tier > 0)
        self._live[item.article.id] = entry
        self._next_seq = max(self._next_seq, item.seq + 1)

    # -- taking work out -------------------------------------------------

    def remove(self, article_id: str) -> Queued | None:
        """Cancel a waiting article; None when it is not waiting."""
        entry = self._live.pop(article_id, None)
        if entry is None:
            return None
        tq = self._tiers[entry.item.tier]
        tq.discard(entry)
        tq.compact()
        return entry.item

    def drain_all(self) -> list[Queued]:
        """Take every waiting item, in arrival order (e.g. to persist on shutdown)."""
        entries = list(self._live.values())
        for entry in entries:
            entry.state = _State.GONE
        self._live.clear()
        for tq in self._tiers:
            tq.clear()
            tq.credit = min(tq.credit, 0)
        return sorted((entry.item for entry in entries), key=lambda item: item.seq)

    def next_batch(
        self, now: float, size: int | None = None, held: Collection[int] = ()
    ) -> Batch | None:
        """Compose the next batch of up to ``size`` articles (default: the sum
        of the mix weights); None when nothing is waiting. The ``held``
        tiers (indices) get nothing: they count as empty, their slots go to
        the others (see ``policies.feeding``)."""
        if size is None:
            size = self._total_weight
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        if not self._live:
            return None
        self._age(now)
        slots = self._allot(size, held)
        if not any(slots):
            return None
        items: list[Queued] = []
        for tq, count in zip(self._tiers, slots, strict=True):
            for _ in range(count):
                entry = tq.pop_next()
                del self._live[entry.item.article.id]
                tq.discard(entry)
                items.append(entry.item)
            if not tq:
                tq.credit = min(tq.credit, 0)
            tq.compact()
        batch = Batch(self._next_batch_id, tuple(items))
        self._next_batch_id += 1
        return batch

    def _age(self, now: float) -> None:
        if math.isinf(self._aging_s):
            return
        for k in range(1, len(self._tiers)):
            source, target = self._tiers[k], self._tiers[k - 1]
            while (entry := source.pop_overdue(now, self._aging_s)) is not None:
                source.n_waiting -= 1
                entry.item = replace(entry.item, tier=k - 1)
                entry.state = _State.AGED
                target.add(entry, next(self._uids), track_arrival=False)

    def _allot(self, size: int, held: Collection[int] = ()) -> list[int]:
        """Slots per tier for a batch of ``size``: entitled slots by credit,
        then leftovers highest tier first; a held tier counts as empty."""
        tiers = self._tiers
        waiting = [0 if k in held else len(tq) for k, tq in enumerate(tiers)]
        for tq, weight, count in zip(tiers, self._weights, waiting, strict=True):
            if count:
                tq.credit += size * weight
            else:
                tq.credit = min(tq.credit, 0)
        slots = [0] * len(tiers)
        remaining = size
        while remaining:
            best = -1
            best_credit = 0
            for k, tq in enumerate(tiers):
                if tq.credit > best_credit and waiting[k] > slots[k]:
                    best, best_credit = k, tq.credit
            if best < 0:
                break
            slots[best] += 1
            tiers[best].credit -= self._total_weight
            remaining -= 1
        for k in range(len(tiers)):
            if not remaining:
                break
            extra = min(remaining, waiting[k] - slots[k])
            slots[k] += extra
            remaining -= extra
        return slots
