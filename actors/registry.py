"""ModelRegistry: the one owner of every model's quota state.

It serialises every quota decision through its inbox, so quota state needs
no lock, and it is message plumbing around three policy objects:

* ``QuotaPolicy`` -- windows, pacing, cooldowns, the day's counts, and what
  the provider is learnt to admit;
* ``WaitingList`` -- who gets quota next: a caller that cannot be granted
  now waits *inside* the registry and is answered the moment capacity
  exists (nobody sleeps on a guess, nobody polls), highest tier first, then
  oldest, each fallback patient for its primary, in O(log n) per event;
* the dispatch plan (``policies.planner``) -- from the backlog the composer
  reports, how much of each model each tier may use, so a higher tier's
  overflow never spends the model a lower tier depends on while the higher
  tier's own models would serve it in time. It is remade when the backlog,
  a limit or a cooldown changes, not per request.

One ``Waker`` is armed, over the models that have waiters only, at the next
moment capacity can appear by time alone (a cooldown's end, a window entry's
expiry, the pacing's refill, a patience or a deadline running out); reports
of finished calls serve waiters too.

Time: every decision reads the clock's steady ``now`` and its wall offset at
that moment, which the policy uses only for the Pacific day; snapshots are
taken in wall-clock time.

Longer than the house's ~450 lines on purpose: one actor class; its
decisions are the quota policy's, the planner's and the waiting list's, in
policies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import pykka
import structlog

from tierbatch.actors.clock import Clock, wall_offset
from tierbatch.actors.messages import (
    Acquire,
    AcquireFailed,
    AdoptGrants,
    Backlog,
    CommitBatch,
    GetBudgetState,
    GetPlan,
    GetQuotaSnapshot,
    GetQuotaStatus,
    Granted,
    ReleaseHolder,
    Report,
    Sent,
    SettleBatch,
    StopGranting,
    Wake,
    Withdraw,
)
from tierbatch.actors.observer import NullObserver, RegistryObserver
from tierbatch.actors.threads import ThreadLedger
from tierbatch.actors.waker import Waker
from tierbatch.policies.backlog import TierBacklog
from tierbatch.policies.budget import BudgetGate, BudgetState, DailyBudget
from tierbatch.policies.outcomes import (
    Abandoned,
    ModelNotFound,
    RateLimited,
    ServerError,
    TimedOut,
)
from tierbatch.policies.planner import Allowances, Plan, TierShape, plan_dispatch
from tierbatch.policies.quota import OutstandingGrant, QuotaPolicy
from tierbatch.policies.waiting import Expired, Unroutable, Waiter, WaitingList
from tierbatch.policies.waiting import Granted as WaitGranted

_log = structlog.get_logger(__name__)

# Outcomes after which a model may have entered a cooldown worth reporting.
_COOLING_OUTCOMES = (RateLimited, ServerError, TimedOut)
# A backlog that moved by less than this share (and a few requests) keeps the plan.
_BACKLOG_CHANGE = 0.1
# A plan is remade after this many replan intervals even if nothing moved.
_STALE_PLANS = 5


class ModelRegistry(pykka.ThreadingActor):
    """``tiers`` describes how each tier packs its articles (for the plan;
    without it, or before the first ``Backlog``, every tier may use every
    model of its chain). ``replan_s`` is the least time between two plans
    when only the backlog moves. ``on_died`` is called (on this actor's
    thread) if a message handler raises: the actor is then dead, so the
    runtime must stop using it."""

    # A stuck actor thread must never keep the process from exiting.
    use_daemon_thread = True

    def __init__(
        self,
        policy: QuotaPolicy,
        clock: Clock,
        observer: RegistryObserver | None = None,
        on_died: Callable[[str, BaseException], None] | None = None,
        threads: ThreadLedger | None = None,
        *,
        tiers: Sequence[TierShape] = (),
        replan_s: float = 1.0,
        budget: DailyBudget | None = None,
    ) -> None:
        super().__init__()
        self._budget = budget
        self._budget_stopped: tuple[str, ...] = ()  # tiers the budget stopped, as last logged
        self._budget_moved: tuple[str, ...] = ()  # tiers moved to the Batch API, as last logged
        self._threads = threads
        self._policy = policy
        self._clock = clock
        self._observer: RegistryObserver = observer or NullObserver()
        self._on_died = on_died
        self._stopped_granting = False  # after StopGranting: every request is "stopped"
        self._waiting = WaitingList()
        self._requests: dict[tuple[int, int], Acquire] = {}  # (holder, request id) -> ask
        self._grants: dict[int, tuple[int, str]] = {}  # grant id -> (holder, model)
        self._shapes = {shape.tier: shape for shape in tiers}
        self._backlog: dict[str, TierBacklog] = {}
        self._planned_backlog: dict[str, float] = {}
        self._allowances: Allowances | None = None
        self._replan_s = replan_s
        self._planned_at = -float("inf")
        # When the last plan promised the known backlog done (clock time).
        self._promise: float | None = None
        self._plan_due = False
        self._limits: dict[str, tuple[int, int, float, str]] = {}
        self._warned_unavailable: set[str] = set()
        self._cooling: dict[str, tuple[float, str]] = {}  # model -> last logged cooldown
        self._offset = wall_offset(clock)  # wall minus steady, as of the last clock read
        self._waker = Waker(clock, self._tell_wake, name="tierbatch-registry-waker")

    # ---- lifecycle -----------------------------------------------------------

    def on_start(self) -> None:
        if self._threads is not None:
            self._threads.add_current("registry")
        now, offset = self._read_clock()
        for status in self._policy.status(now, wall_offset=offset):
            self._limits[status.model] = (
                status.learnt_rpm,
                status.learnt_tpm,
                status.burst,
                status.limiter,
            )
        self._waker.start()

    def on_stop(self) -> None:
        self._waker.stop()
        now, offset = self._read_clock()
        self._answer_waiters("registry stopped")
        # Calls still out are of unknown fate: count them spent.
        for grant_id in list(self._grants):
            self._policy.report(grant_id, Abandoned(), now, wall_offset=offset)
            if self._budget is not None:
                self._budget.settle(grant_id, Abandoned(), now + offset)
        self._grants.clear()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A handler raised: this actor is dead. Stop the timer thread (pykka
        calls no ``on_stop`` now), answer every waiter so no pack hangs on
        a dead registry, and tell the runtime."""
        self._waker.stop()
        with contextlib.suppress(Exception):
            self._answer_waiters("the registry died")
        if self._on_died is not None:
            self._on_died("registry", exception_value)

    def _read_clock(self) -> tuple[float, float]:
        """Steady now, and the wall offset at that moment, kept for the rest
        of the message's handling so one decision sees one calendar day."""
        now = self._clock.now()
        self._offset = self._clock.wall() - now
        return now, self._offset

    def _answer_waiters(self, detail: str) -> None:
        for waiter in self._waiting.drain():
            ask = self._requests.pop((waiter.holder, waiter.request_id), None)
            if ask is not None:
                ask.reply(AcquireFailed(ask.request_id, "stopped", detail))
        for ask in self._requests.values():  # none should be left; never leave one hanging
            ask.reply(AcquireFailed(ask.request_id, "stopped", detail))
        self._requests.clear()

    def _tell_wake(self, generation: int) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(Wake(generation))

    # ---- messages ------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case Acquire():
                self._on_acquire(message)
            case Report(grant_id, outcome):
                self._on_report(grant_id, outcome)
            case Sent(grant_id, at, tokens):
                held = self._grants.get(grant_id)
                before = self._policy.reserved(grant_id) if tokens else None
                if held is not None and self._policy.sent(grant_id, at, tokens=tokens):
                    self._observer.on_sent(grant_id, held[1], at)
                    if before is not None and tokens < before:
                        self._serve(self._read_clock()[0])  # what it did not carry is free
            case Wake():
                self._serve(self._read_clock()[0])
            case Withdraw(request_id, holder):
                if self._waiting.remove(holder, request_id) is not None:
                    self._requests.pop((holder, request_id), None)
                    self._serve(self._read_clock()[0])
            case ReleaseHolder(holder):
                self._on_release_holder(holder)
            case Backlog(tiers):
                self._on_backlog(tiers)
            case AdoptGrants(holder, grants):
                self._on_adopt(holder, grants)
            case StopGranting():
                self._stopped_granting = True
                self._answer_waiters("the runtime is shutting down")
                self._waker.arm(None)
            case GetQuotaStatus():
                now, offset = self._read_clock()
                return self._policy.status(now, wall_offset=offset)
            case GetQuotaSnapshot():
                snapshot = self._policy.snapshot(wall_offset=self._read_clock()[1])
                if self._budget is not None:
                    snapshot["budget"] = self._budget.snapshot()
                return snapshot
            case GetBudgetState():
                return self._budget_state()
            case CommitBatch():
                return self._commit_batch(message)
            case SettleBatch():
                self._settle_batch(message)
            case GetPlan():
                return None if self._allowances is None else self._allowances.plan
            case _:
                raise TypeError(f"ModelRegistry: unexpected message {message!r}")
        return None

    def _on_acquire(self, msg: Acquire) -> None:
        if self._stopped_granting:
            msg.reply(AcquireFailed(msg.request_id, "stopped", "the runtime is shutting down"))
            return
        now, _ = self._read_clock()
        key = (msg.holder, msg.request_id)
        if key in self._requests:
            msg.reply(AcquireFailed(msg.request_id, "no_route", "this request already waits"))
            return
        self._requests[key] = msg
        self._waiting.push(
            Waiter(
                request_id=msg.request_id,
                holder=msg.holder,
                tier=msg.tier or str(msg.tier_rank),
                tier_rank=msg.tier_rank,
                chain=msg.chain,
                est_tokens=msg.est_tokens,
                enqueued_at=msg.enqueued_at,
                deadline=msg.deadline,
                patience_s=msg.patience_s,
            ),
            now,
        )
        self._serve(now)

    def _on_report(self, grant_id: int, outcome: Any) -> None:
        now, offset = self._read_clock()
        held = self._grants.pop(grant_id, None)
        if self._budget is not None:
            self._budget.settle(grant_id, outcome, now + offset)
        if not self._policy.report(grant_id, outcome, now, wall_offset=offset) or held is None:
            return
        _, model = held
        self._observer.on_outcome(model, outcome, now)
        if isinstance(outcome, ModelNotFound):
            self._warn_unavailable(model, outcome.message)
            self._decide(self._waiting.unroutable(self._policy.view(offset)))
            self._plan_due = True
        elif isinstance(outcome, _COOLING_OUTCOMES):
            self._observe_cooldown(model, now)
        if isinstance(outcome, RateLimited):
            self._observe_limits(now)
        self._serve(now)

    def _on_release_holder(self, holder: int) -> None:
        now, offset = self._read_clock()
        for grant_id, (owner, _) in list(self._grants.items()):
            if owner == holder:
                del self._grants[grant_id]
                self._policy.report(grant_id, Abandoned(), now, wall_offset=offset)
                if self._budget is not None:
                    self._budget.settle(grant_id, Abandoned(), now + offset)
        for waiter in self._waiting.remove_holder(holder):
            self._requests.pop((waiter.holder, waiter.request_id), None)
        self._serve(now)

    def _on_adopt(self, holder: int, grants: Sequence[OutstandingGrant]) -> None:
        now, offset = self._read_clock()
        for grant in self._policy.adopt(grants, now, wall_offset=offset):
            self._grants[grant.grant_id] = (holder, grant.model)
        self._serve(now)

    def _on_backlog(self, tiers: Sequence[TierBacklog]) -> None:
        self._backlog = {t.tier: t for t in tiers}
        moved = self._backlog_moved()
        if moved:
            self._plan_due = True
        if self._budget is not None:
            self._budget.set_backlog({t.tier: (t.articles, t.tokens_per_article) for t in tiers})
        if moved or self._budget is not None:  # a smaller reserve may free a lower tier
            self._serve(self._read_clock()[0])

    # ---- decisions -------------------------------------------------------------

    def _serve(self, now: float) -> None:
        """Answer every waiter that can be answered now, then arm the timer."""
        if self._stopped_granting:
            return
        self._maybe_replan(now)
        view = self._policy.view(self._offset)
        budget = self._budget
        gate = (
            None
            if budget is None
            else BudgetGate(budget, now + self._offset, self._waiting.waiting_by_tier())
        )
        self._decide(self._waiting.serve(now, view, self._allowances, gate))
        if budget is not None:
            self._observe_budget(now)
        if not self._waiting:
            self._waker.arm(None)
            return
        wake = self._waiting.next_wake(now, view)
        if budget is not None and self._budget_stopped:
            # Waiters the budget holds are freed at the next midnight at the latest.
            reset = budget.next_reset(now + self._offset) - self._offset
            wake = reset if wake is None else min(wake, reset)
        if self._allowances is not None:
            # A waiter the plan holds back is freed by the next plan: make
            # sure one comes even if nothing else happens.
            again = self._planned_at + self._clock_s(
                self._replan_s if self._plan_due else _STALE_PLANS * self._replan_s
            )
            wake = again if wake is None else min(wake, again)
        self._waker.arm(wake)

    def _decide(self, decisions: Sequence[Any]) -> None:
        for decision in decisions:
            waiter = decision.waiter
            ask = self._requests.pop((waiter.holder, waiter.request_id), None)
            if ask is None:
                continue
            if isinstance(decision, WaitGranted):
                grant = decision.grant
                self._grants[grant.grant_id] = (ask.holder, grant.model)
                self._observer.on_grant(grant, ask.tier_rank)
                ask.reply(Granted(ask.request_id, grant))
            elif isinstance(decision, Expired):
                ask.reply(AcquireFailed(ask.request_id, "expired", "deadline passed"))
            elif isinstance(decision, Unroutable):
                ask.reply(AcquireFailed(ask.request_id, "no_route", decision.reason))

    # ---- the budget ------------------------------------------------------------

    def _budget_state(self) -> BudgetState | None:
        if self._budget is None:
            return None
        now, offset = self._read_clock()
        return self._budget.state(now + offset, self._waiting.waiting_by_tier())

    def _commit_batch(self, ask: CommitBatch) -> int:
        if self._budget is None:
            return len(ask.request_tokens)
        now, offset = self._read_clock()
        approved = self._budget.commit_batch(
            ask.job_id,
            ask.tier,
            ask.model,
            ask.request_tokens,
            ask.discount,
            now + offset,
            self._waiting.waiting_by_tier(),
        )
        self._observe_budget(now)
        return approved

    def _settle_batch(self, done: SettleBatch) -> None:
        if self._budget is None:
            return
        now, offset = self._read_clock()
        self._budget.settle_batch(done.job_id, done.tier, done.usd, done.submitted_at, now + offset)
        self._serve(now)  # a job cheaper than its estimate may free a tier

    def _observe_budget(self, now: float) -> None:
        """Log (and tell the observer) when the budget stops or frees a tier,
        or moves one to the Batch API."""
        assert self._budget is not None
        wall = now + self._offset
        waiting = self._waiting.waiting_by_tier()
        budget = self._budget
        stopped = tuple(t for t in budget.tiers if not budget.may_spend(t, wall, waiting))
        moved = budget.moved(wall, waiting)
        if stopped == self._budget_stopped and moved == self._budget_moved:
            return
        for tier in moved:
            if tier not in self._budget_moved:
                _log.info(
                    "daily budget: tier moves to the Batch API until midnight",
                    tier=tier,
                    reason="its budget left does not pay for its backlog at interactive prices",
                )
        self._budget_moved = moved
        before = set(self._budget_stopped)
        self._budget_stopped = stopped
        state = budget.state(wall, waiting)
        for tier in stopped:
            if tier not in before:
                _log.info(
                    "daily budget: tier stops spending",
                    tier=tier,
                    committed_usd=round(state.committed_usd, 6),
                    usd_per_day=state.usd_per_day,
                    on_exhausted=str(state.on_exhausted),
                    resets_in_s=round(state.resets_at - wall, 1),
                )
        for tier in before - set(stopped):
            _log.info("daily budget: tier may spend again", tier=tier)
        notify = getattr(self._observer, "on_budget", None)
        if notify is not None:
            notify(state, now)

    # ---- the plan --------------------------------------------------------------

    def _backlog_moved(self) -> bool:
        """Whether the work ahead changed enough to plan again."""
        for tier, shape in self._shapes.items():
            now = float(self._backlog[tier].articles) if tier in self._backlog else 0.0
            then = self._planned_backlog.get(tier, 0.0)
            if abs(now - then) > max(_BACKLOG_CHANGE * then, shape.per_request):
                return True
        return False

    def _backlog_grew(self) -> bool:
        """Whether any tier has more work waiting than when it was last planned."""
        return any(
            float(backlog.articles) > self._planned_backlog.get(tier, 0.0) + 1e-9
            for tier, backlog in self._backlog.items()
        )

    def _maybe_replan(self, now: float) -> None:
        if not self._shapes or not self._backlog:
            return
        due = self._plan_due and now - self._planned_at >= self._clock_s(self._replan_s)
        stale = now - self._planned_at >= self._clock_s(_STALE_PLANS * self._replan_s)
        if due or stale:
            self._replan(now)

    def _clock_s(self, real_s: float) -> float:
        """``real_s`` real seconds in this clock's seconds."""
        per = self._clock.to_real(1.0)
        return real_s / per if per > 0 else real_s

    def _replan(self, now: float) -> None:
        waiting = self._waiting.waiting_by_tier()
        demands = []
        for tier, shape in self._shapes.items():
            backlog = self._backlog.get(tier)
            demands.append(
                shape.demand(
                    backlog.articles if backlog else 0,
                    backlog.tokens_per_article if backlog else 0.0,
                    backlog.arrivals_per_s if backlog else 0.0,
                    waiting_requests=waiting.get(tier, 0),
                )
            )
        capacity = self._policy.capacity(now, wall_offset=self._offset)
        # The last plan's promise holds unless new work came: the planner's
        # tolerance (higher tiers finishing earlier at a little cost to the
        # makespan) is spent once per backlog, not once per replan.
        promise = None if self._promise is None or self._backlog_grew() else self._promise
        plan = plan_dispatch(
            demands, capacity, finish_by_s=None if promise is None else max(0.0, promise - now)
        )
        self._promise = _promised_finish(plan, now)
        paced = [m for m, cap in capacity.items() if cap.step_s <= 0]
        carry = None if self._allowances is None else self._allowances.carry_over(now)
        self._allowances = Allowances(plan, made_at=now, paced=paced, carry=carry)
        self._planned_at = now
        self._plan_due = False
        self._planned_backlog = {t: float(b.articles) for t, b in self._backlog.items()}
        _log.debug(
            "dispatch plan",
            makespan_s=None if plan.makespan_s is None else round(plan.makespan_s, 1),
            tiers={t.tier: {m: round(n, 1) for m, n in t.requests.items()} for t in plan.tiers},
        )

    # ---- reporting -------------------------------------------------------------

    def _observe_cooldown(self, model: str, now: float) -> None:
        for status in self._policy.status(now, wall_offset=self._offset):
            if status.model != model:
                continue
            until = status.cooldown_until
            if status.exhausted_until is not None:
                until = max(until or 0.0, status.exhausted_until)
                reason = "requests_per_day"
            else:
                reason = status.cooldown_reason or "cooldown"
            if until is None or until <= now:
                continue
            # Every 429 of a burst re-reports the same cooldown: a line at
            # info when one starts (or turns into another kind, such as the
            # day's quota running out), at debug while it goes on.
            last = self._cooling.get(model)
            self._cooling[model] = (until, reason)
            seconds = round(until - now, 3)
            if last is None or last[0] <= now or last[1] != reason:
                self._observer.on_cooldown(model, now, until, reason)
                self._plan_due = True
                _log.info("model cooling down", model=model, seconds=seconds, reason=reason)
            else:
                _log.debug("model still cooling down", model=model, seconds=seconds, reason=reason)

    def _observe_limits(self, now: float) -> None:
        """Log what the provider is learnt to admit: a changed limit or shape
        at info (a state change), a changed burst at debug."""
        for status in self._policy.status(now, wall_offset=self._offset):
            learnt = (status.learnt_rpm, status.learnt_tpm, status.burst, status.limiter)
            last = self._limits.get(status.model)
            self._limits[status.model] = learnt
            if last == learnt:
                continue
            self._plan_due = True
            level = (
                "info"
                if last is None or last[:2] != learnt[:2] or last[3] != learnt[3]
                else ("debug")
            )
            getattr(_log, level)(
                "learnt limit",
                model=status.model,
                rpm=status.learnt_rpm,
                configured_rpm=status.configured_rpm,
                tpm=status.learnt_tpm,
                configured_tpm=status.configured_tpm,
                burst=round(status.burst, 1),
                limiter=status.limiter,
            )

    def _warn_unavailable(self, model: str, message: str) -> None:
        if model in self._warned_unavailable:
            return
        self._warned_unavailable.add(model)
        _log.warning(
            "model unavailable: the provider answered 404; every chain now skips it. "
            "It may be retired or misspelt: update the config.",
            model=model,
            detail=message,
        )


def _promised_finish(plan: Plan, now: float) -> float | None:
    """When ``plan`` has the known backlog done (clock time), or None for a
    stream the quota cannot keep up with."""
    if plan.makespan_s is None:
        return None
    finishes = [t.finish_s for t in plan.tiers if t.finish_s is not None and t.demand > 0]
    return now + max([plan.makespan_s, *finishes])


__all__ = ["ModelRegistry", "Plan"]
