"""Batch jobs, as pure decisions: when to submit, how to pack, what a job's
state means, and how a finished job settles its articles.

The life of a job (the store keeps it durable, one row per job):

``submitting``
    The row and its requests (key -> article ids) are written, and its
    articles' leases handed to the job, *before* the job is created at the
    API. Creating a job is not idempotent, so this row is what keeps a
    restart from submitting twice. The job's id is also its
    ``display_name`` at the API.
``submitted``
    The API answered with the job's name; it is stored, then polled.
``settled`` / ``returned``
    Over: its results written (exactly once, in the transaction that
    settles the row), or its articles given back (to the queue, or to
    interactive calls).

A ``submitting`` row without a name (its daemon died between the create
call and storing the answer) is resolved by ``resolve_nameless``: the job
is looked up at the API by its display name; found, its name is stored and
it is polled like any other; not found, it never reached the API and its
articles go back. The lookup happens only once nobody polls the row any
more (its poll lease expired), so the create call it races with is over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from tierbatch.policies.articles import Article
from tierbatch.policies.attempts import ArticleProgress, RetryBudget
from tierbatch.policies.batch_costs import TokenCounts, split_cost, tokens_cost_usd
from tierbatch.policies.composition import Queued
from tierbatch.policies.config import BatchConfig, ModelSpec, TierSpec
from tierbatch.policies.grounding import GroundingPolicy
from tierbatch.policies.outcomes import (
    BadRequest,
    CallOutcome,
    Succeeded,
    TimedOut,
    Usage,
)
from tierbatch.policies.results import ArticleAnswer, FailureReason, TerminalResult
from tierbatch.policies.settlement import settle_answers

__all__ = [
    "JobPhase",
    "JobRequest",
    "JobSettlement",
    "RequestAnswer",
    "Step",
    "job_is_due",
    "pack_requests",
    "settle_job",
    "step_for",
]


class JobPhase(StrEnum):
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    SETTLED = "settled"
    RETURNED = "returned"

    @property
    def in_flight(self) -> bool:
        return self in (JobPhase.SUBMITTING, JobPhase.SUBMITTED)


class Step(StrEnum):
    """What to do with a job after a poll."""

    WAIT = "wait"  # pending or running: poll again later
    SETTLE = "settle"  # succeeded: read and settle its results
    RETURN = "return"  # failed, cancelled or expired: its articles go back
    GIVE_UP = "give_up"  # not over after give_up_s: cancel it, articles back


_TERMINAL_FAILURES = frozenset({"failed", "cancelled", "expired"})


def step_for(state: str, created_at: float, now: float, give_up_s: float) -> Step:
    """The step for a job in API ``state`` (``JobState`` values: pending,
    running, succeeded, failed, cancelled, expired), created at
    ``created_at`` (epoch seconds), at ``now``."""
    if state == "succeeded":
        return Step.SETTLE
    if state in _TERMINAL_FAILURES:
        return Step.RETURN
    if now - created_at >= give_up_s:
        return Step.GIVE_UP
    return Step.WAIT


def job_is_due(
    pending: int, oldest_since: float | None, now: float, full: int, collect_s: float
) -> bool:
    """Whether the ``pending`` articles routed to batch (the oldest waiting
    since ``oldest_since``) should go out as a job now: when they fill one
    (``full`` articles), or when the oldest has waited ``collect_s``."""
    if pending <= 0 or oldest_since is None:
        return False
    return pending >= full or now - oldest_since >= collect_s


def pack_requests(
    articles: Sequence[tuple[str, int]], per_request: int, max_tokens: int
) -> list[tuple[str, ...]]:
    """``(article id, estimated tokens)`` in order, packed into requests of
    at most ``per_request`` articles and ``max_tokens`` estimated tokens
    (an article larger than that goes alone)."""
    packs: list[tuple[str, ...]] = []
    current: list[str] = []
    tokens = 0
    for article_id, estimate in articles:
        if current and (len(current) >= per_request or tokens + estimate > max_tokens):
            packs.append(tuple(current))
            current, tokens = [], 0
        current.append(article_id)
        tokens += estimate
    if current:
        packs.append(tuple(current))
    return packs


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One request of a job: its key and the ids of its articles."""

    key: str
    article_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RequestAnswer:
    """What the job answered for one request: the outcome, the answers by
    article id (after ``Succeeded``) and the tokens it used."""

    outcome: CallOutcome
    answers: Mapping[str, ArticleAnswer]
    tokens: TokenCounts = field(default_factory=TokenCounts)


@dataclass(frozen=True, slots=True)
class JobSettlement:
    """A finished job's results (one per article of the job) and its cost,
    at the batch price and as it would have been interactively."""

    results: tuple[TerminalResult, ...]
    cost_usd: float
    interactive_cost_usd: float
    failed_requests: int
    tokens: TokenCounts


def _weight(article: Article) -> int:
    return max(1, len(article.title) + len(article.text))


def _failure_reason(outcome: CallOutcome) -> FailureReason:
    if isinstance(outcome, BadRequest):
        return FailureReason.BAD_REQUEST
    if isinstance(outcome, TimedOut):
        return FailureReason.TIMEOUT
    return FailureReason.RETRIES_EXHAUSTED


def settle_job(
    job_name: str,
    requests: Sequence[JobRequest],
    answers: Mapping[str, RequestAnswer],
    articles: Mapping[str, Article],
    *,
    tier: TierSpec,
    model: str,
    spec: ModelSpec,
    batch: BatchConfig,
    grounding: GroundingPolicy,
    submitted_at: float,
    now: float,
    task_version: str = "",
) -> JobSettlement:
    """Every article of a succeeded job, settled as an interactive answer
    is (``settlement.settle_answers``: the grounding check, one ``Done`` per
    extraction), with the batch price: each request's cost from its whole
    ``usage_metadata`` at ``batch.discount``, shared among its articles by
    size. An article with an invalid answer, or of a request that failed
    inside the job, ends ``Failed`` -- only that article (or that request's
    articles); the job's others are done. An article whose payload is
    missing from ``articles`` (the job no longer holds it) gets no result.
    ``now - submitted_at`` is each article's latency; ``task_version`` is
    recorded with every ``Done``, as for interactive answers."""
    budget = RetryBudget(1, 1)  # a batch answer is final: no retry inside the job
    results: list[TerminalResult] = []
    cost = interactive = 0.0
    failed_requests = 0
    used = TokenCounts()
    for request in requests:
        answer = answers.get(request.key)
        members = [
            ArticleProgress(Queued(articles[i], 0.0, 0, 0, submitted_at, n), _weight(articles[i]))
            for n, i in enumerate(request.article_ids)
            if i in articles
        ]
        for member in members:
            member.tried(model)
        if answer is None or not isinstance(answer.outcome, Succeeded):
            failed_requests += 1
            outcome = answer.outcome if answer is not None else None
            detail = f"batch job {job_name}, request {request.key}: " + (
                _describe(outcome) if outcome is not None else "no result"
            )
            reason = (
                _failure_reason(outcome) if outcome is not None else FailureReason.RETRIES_EXHAUSTED
            )
            for member in members:
                member.failed(reason, detail)
                results.append(member.result(tier.name))
            continue
        used += answer.tokens
        request_cost = tokens_cost_usd(spec, answer.tokens, discount=batch.discount)
        cost += request_cost
        interactive += tokens_cost_usd(spec, answer.tokens)
        usage = Usage(answer.tokens.prompt, answer.tokens.billed_output)
        plan = settle_answers(
            members,
            answer.answers,
            model=model,
            spec=spec,
            tier=tier,
            excluded=frozenset(),
            usage=usage,
            budget=budget,
            now=now,
            grounding=grounding,
            task_version=task_version,
        )
        shares = split_cost(request_cost, [m.est_tokens for m in members])
        share_of = {m.article_id: s for m, s in zip(members, shares, strict=True)}
        results.extend(replace(d, cost_usd=share_of[d.article_id]) for d in plan.done)
        results.extend(m.result(tier.name) for m in plan.spent)
        for retry in plan.retries:  # the budget of 1 spends every one; kept for safety
            results.extend(m.result(tier.name) for m in retry.members)
    return JobSettlement(tuple(results), cost, interactive, failed_requests, used)


def _describe(outcome: CallOutcome) -> str:
    message = getattr(outcome, "message", "")
    return f"{type(outcome).__name__}: {message}" if message else type(outcome).__name__
