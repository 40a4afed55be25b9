"""The registry's waiting list: who gets quota next, in O(log n) per grant.

A request that cannot be granted when it asks waits here. Each model keeps
its own heaps of the waiters that could use it -- one per tier and per kind
of claim -- so an event only looks at the heads of the models it concerns,
however many packs wait:

* ``primary``: waiters whose first choice the model is;
* ``fallback``: waiters for which it is a fallback and whose patience has
  run out (or who have none): any model of their chain will do;
* ``patient``: waiters for which it is a fallback while they still hold out
  for their primary. They may take it only when no waiter wants it as its
  own primary (a model's own tier has the first claim on it) and their
  primary will not free within their remaining patience.

Order within a model: tier first, then age (``enqueued_at``), then arrival.
A waiter at the head of a model whose request does not fit yet (its tokens)
holds that model: nobody behind it overtakes it there, while other models go
on serving (no head-of-line blocking across models). A waiter is granted the
first model of its chain that can take it now and that the plan's
``Allowances`` let its tier use. Removal is lazy: a served waiter's other
heap entries are skipped when they reach a head.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from tierbatch.policies.planner import Allowances
from tierbatch.policies.quota import Grant

__all__ = [
    "Decision",
    "Expired",
    "GrantGate",
    "Granted",
    "QuotaView",
    "Unroutable",
    "Waiter",
    "WaitingList",
]


@dataclass(frozen=True, slots=True)
class Waiter:
    """A request for quota on the first model of ``chain`` that has some.

    ``tier_rank`` 0 is the highest tier; ``enqueued_at`` (the oldest article's
    enqueue time) orders waiters of one tier; ``deadline`` bounds the wait;
    ``patience_s`` is how long, from when it started waiting, it holds out
    for its primary (``chain[0]``)."""

    request_id: int
    holder: int
    tier: str
    tier_rank: int
    chain: tuple[str, ...]
    est_tokens: int
    enqueued_at: float
    deadline: float | None = None
    patience_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Granted:
    waiter: Waiter
    grant: Grant


@dataclass(frozen=True, slots=True)
class Expired:
    waiter: Waiter


@dataclass(frozen=True, slots=True)
class Unroutable:
    """No model of the chain can ever take it (unknown, retired, too small)."""

    waiter: Waiter
    reason: str


Decision = Granted | Expired | Unroutable


class QuotaView(Protocol):
    """What the waiting list needs of the quota policy."""

    def earliest(self, model: str, est_tokens: int, now: float) -> float | None:
        """When ``model`` could take ``est_tokens`` (``now`` if now; None: only
        an in-flight report frees it; ``math.inf``: never)."""
        ...

    def grant(self, model: str, est_tokens: int, now: float) -> Grant:
        """Take the capacity (only called when ``earliest`` says now)."""
        ...

    def never_reason(self, model: str, est_tokens: int) -> str | None:
        """Why ``model`` can never take ``est_tokens``, or None."""
        ...


class GrantGate(Protocol):
    """A check beyond quota and plan on every grant (the daily budget):
    ``may_grant`` is asked before ``waiter`` may take ``model``; ``granted``
    is told of every grant made, at once, so the next check counts it."""

    def may_grant(self, waiter: Waiter, model: str) -> bool: ...

    def granted(self, waiter: Waiter, grant: Grant) -> None: ...


class _Claim(IntEnum):
    PRIMARY = 0
    FALLBACK = 1
    PATIENT = 2


# (enqueued_at, seq): the order of one heap.
_Entry = tuple[float, int]


@dataclass(slots=True)
class _Live:
    waiter: Waiter
    seq: int
    queued_at: float
    patient: bool


class WaitingList:
    def __init__(self) -> None:
        self._seq = itertools.count()
        self._reset()

    def _reset(self) -> None:
        self._live: dict[int, _Live] = {}  # seq -> live waiter
        # model -> claim -> tier_rank -> heap of (enqueued_at, seq)
        self._heaps: dict[str, dict[_Claim, dict[int, list[_Entry]]]] = {}
        # model -> live waiters whose primary it is
        self._primary: dict[str, int] = {}
        self._patience_ends: list[tuple[float, int]] = []
        self._deadlines: list[tuple[float, int]] = []
        self._by_holder: dict[int, set[int]] = {}
        self._by_request: dict[tuple[int, int], int] = {}  # (holder, request_id) -> seq
        self._by_tier: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __bool__(self) -> bool:
        return bool(self._live)

    @property
    def waiters(self) -> Iterable[Waiter]:
        return (live.waiter for live in self._live.values())

    # ---- in and out ------------------------------------------------------------

    def push(self, waiter: Waiter, now: float) -> None:
        if not waiter.chain:
            raise ValueError(f"request {waiter.request_id}: an empty chain")
        seq = next(self._seq)
        patient = waiter.patience_s > 0 and len(waiter.chain) > 1
        live = _Live(waiter, seq, now, patient)
        key = (waiter.holder, waiter.request_id)
        if key in self._by_request:
            raise ValueError(f"request {waiter.request_id} of holder {waiter.holder} waits already")
        self._live[seq] = live
        self._by_request[key] = seq
        self._by_tier[waiter.tier] = self._by_tier.get(waiter.tier, 0) + 1
        self._by_holder.setdefault(waiter.holder, set()).add(seq)
        primary = waiter.chain[0]
        self._primary[primary] = self._primary.get(primary, 0) + 1
        self._file(live)
        if patient:
            heapq.heappush(self._patience_ends, (now + waiter.patience_s, seq))
        if waiter.deadline is not None:
            heapq.heappush(self._deadlines, (waiter.deadline, seq))

    def _file(self, live: _Live) -> None:
        """Put a waiter in the heaps of every model of its chain."""
        entry = (live.waiter.enqueued_at, live.seq)
        rank = live.waiter.tier_rank
        for i, model in enumerate(live.waiter.chain):
            if i == 0:
                claim = _Claim.PRIMARY
            else:
                claim = _Claim.PATIENT if live.patient else _Claim.FALLBACK
            heapq.heappush(self._heap(model, claim, rank), entry)

    def _heap(self, model: str, claim: _Claim, rank: int) -> list[_Entry]:
        return self._heaps.setdefault(model, {}).setdefault(claim, {}).setdefault(rank, [])

    def _drop(self, live: _Live) -> None:
        del self._live[live.seq]
        del self._by_request[(live.waiter.holder, live.waiter.request_id)]
        self._by_tier[live.waiter.tier] -= 1
        primary = live.waiter.chain[0]
        self._primary[primary] -= 1
        owned = self._by_holder.get(live.waiter.holder)
        if owned is not None:
            owned.discard(live.seq)
            if not owned:
                del self._by_holder[live.waiter.holder]

    def remove(self, holder: int, request_id: int) -> Waiter | None:
        """Drop one waiter (its holder withdrew it); None if it is not waiting."""
        seq = self._by_request.get((holder, request_id))
        if seq is None:
            return None
        live = self._live[seq]
        self._drop(live)
        return live.waiter

    def waiting_by_tier(self) -> dict[str, int]:
        """How many requests of each tier wait."""
        return {tier: n for tier, n in self._by_tier.items() if n > 0}

    def remove_holder(self, holder: int) -> list[Waiter]:
        """Drop every waiter of ``holder`` (an extractor that is gone)."""
        gone = [self._live[seq] for seq in self._by_holder.get(holder, ())]
        for live in gone:
            self._drop(live)
        return [live.waiter for live in gone]

    def drain(self) -> list[Waiter]:
        """Drop every waiter (the registry is stopping)."""
        out = [live.waiter for live in self._live.values()]
        self._reset()
        return out

    # ---- serving ------------------------------------------------------------------

    def serve(
        self,
        now: float,
        quota: QuotaView,
        allowances: Allowances | None = None,
        gate: GrantGate | None = None,
    ) -> list[Decision]:
        """Every decision that can be made at ``now``: grants in order, and
        waiters whose deadline passed or whose chain can never serve them.
        A waiter ``gate`` refuses waits, and holds nobody else back."""
        decisions: list[Decision] = []
        self._expire(now, decisions)
        self._end_patience(now)
        while True:
            best = self._next_grant(now, quota, allowances, decisions, gate)
            if best is None:
                return decisions
            live, model = best
            grant = quota.grant(model, live.waiter.est_tokens, now)
            if allowances is not None:
                allowances.record(live.waiter.tier, model, now)
            if gate is not None:
                gate.granted(live.waiter, grant)
            self._drop(live)
            decisions.append(Granted(live.waiter, grant))

    def _expire(self, now: float, decisions: list[Decision]) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq = heapq.heappop(self._deadlines)
            live = self._live.get(seq)
            if live is not None:
                self._drop(live)
                decisions.append(Expired(live.waiter))

    def _end_patience(self, now: float) -> None:
        """Waiters whose patience ran out move from the patient heaps to the
        fallback heaps (their stale patient entries are skipped lazily)."""
        while self._patience_ends and self._patience_ends[0][0] <= now:
            _, seq = heapq.heappop(self._patience_ends)
            live = self._live.get(seq)
            if live is None or not live.patient:
                continue
            live.patient = False
            entry = (live.waiter.enqueued_at, live.seq)
            for model in live.waiter.chain[1:]:
                heapq.heappush(self._heap(model, _Claim.FALLBACK, live.waiter.tier_rank), entry)

    def _head(self, heap: list[_Entry], claim: _Claim) -> _Live | None:
        """The first live entry of a heap, popping stale ones: served
        waiters, and patient entries of waiters whose patience ran out."""
        while heap:
            live = self._live.get(heap[0][1])
            if live is not None and (claim is not _Claim.PATIENT or live.patient):
                return live
            heapq.heappop(heap)
        return None

    def _candidates(self, model: str) -> list[tuple[tuple[int, float, int], _Live, _Claim]]:
        """The heads of one model's heaps, best first."""
        out = []
        for claim, by_rank in self._heaps.get(model, {}).items():
            for rank, heap in by_rank.items():
                live = self._head(heap, claim)
                if live is not None:
                    out.append(((rank, live.waiter.enqueued_at, live.seq), live, claim))
        out.sort(key=lambda c: c[0])
        return out

    def _next_grant(
        self,
        now: float,
        quota: QuotaView,
        allowances: Allowances | None,
        decisions: list[Decision],
        gate: GrantGate | None = None,
    ) -> tuple[_Live, str] | None:
        """The best (waiter, model) that can be granted now, if any: per model
        its first eligible waiter, unless one ahead of it holds the model;
        then the best of those, on the earliest model of its chain."""
        best: tuple[tuple[int, float, int], int, _Live, str] | None = None
        for model in list(self._heaps):
            for key, live, claim in self._candidates(model):
                if best is not None and key > best[0]:
                    break
                waiter = live.waiter
                if allowances is not None and not allowances.may_use(waiter.tier, model, now):
                    continue  # its tier's share of this model is spent
                if gate is not None and not gate.may_grant(waiter, model):
                    continue  # its tier's budget is spent
                if quota.never_reason(model, waiter.est_tokens) is not None:
                    self._reroute(live, quota, decisions)
                    continue
                if claim is _Claim.PATIENT and not self._may_leave_primary(live, model, now, quota):
                    continue  # it holds out for its primary: no claim on this one yet
                at = quota.earliest(model, waiter.est_tokens, now)
                if at is None or at > now:
                    break  # it holds this model: nobody behind it overtakes it here
                place = waiter.chain.index(model)
                if best is None or (key, place) < (best[0], best[1]):
                    best = (key, place, live, model)
                break
        if best is None:
            return None
        return best[2], best[3]

    def _may_leave_primary(self, live: _Live, model: str, now: float, quota: QuotaView) -> bool:
        """A patient waiter may take fallback ``model`` only if no one waits for
        it as their primary and its own primary will not free in time."""
        if self._primary.get(model, 0) > 0:
            return False
        waiter = live.waiter
        left = live.queued_at + waiter.patience_s - now
        at = quota.earliest(waiter.chain[0], waiter.est_tokens, now)
        return at is None or math.isinf(at) or at > now + left

    def _reroute(self, live: _Live, quota: QuotaView, decisions: list[Decision]) -> None:
        """A model of its chain can never serve this waiter: fail it when no
        model of its chain can."""
        waiter = live.waiter
        reasons = [quota.never_reason(m, waiter.est_tokens) for m in waiter.chain]
        if all(r is not None for r in reasons):
            self._drop(live)
            text = "; ".join(f"{m}: {r}" for m, r in zip(waiter.chain, reasons, strict=True))
            decisions.append(Unroutable(waiter, text))

    # ---- timing -----------------------------------------------------------------

    def next_wake(self, now: float, quota: QuotaView) -> float | None:
        """The earliest moment after ``now`` something can change by time
        alone for a waiter: a head's model frees, a patience ends, a
        deadline passes. None: only an event (a report) can help."""
        soonest = math.inf
        for model in self._heaps:
            for _, live, _ in self._candidates(model):
                at = quota.earliest(model, live.waiter.est_tokens, now)
                if at is not None and at > now:
                    soonest = min(soonest, at)
        for heap in (self._patience_ends, self._deadlines):
            while heap and heap[0][1] not in self._live:
                heapq.heappop(heap)
            if heap:
                soonest = min(soonest, heap[0][0])
        return None if math.isinf(soonest) else max(soonest, now)

    def unroutable(self, quota: QuotaView) -> list[Decision]:
        """Fail every waiter no model of whose chain can ever serve it (after
        a model turned out retired, say)."""
        decisions: list[Decision] = []
        for live in list(self._live.values()):
            if live.seq in self._live:
                self._reroute(live, quota, decisions)
        return decisions
