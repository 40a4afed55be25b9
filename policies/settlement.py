"""What becomes of a pack's articles once its call has an outcome.

The extractor's decisions, as pure functions it only carries out:

- ``classify`` maps a call's outcome onto an action. A 429, a 404 for the
  model or a call that was never sent retries without counting a failure
  (none of them is the articles' fault); a server error or a timeout
  retries and counts one; a 400 fails the pack (it cannot succeed as sent);
  401/403 halts the extractor (a configuration error: retrying would only
  spend quota on refusals); an abandoned call gives the articles back
  untried.
- ``settle_answers`` sorts a model's answer article by article: an
  extraction becomes ``Done`` with its share of the tokens and cost, its
  entities checked against the request's texts (``ground_entities``: each
  kept, flagged or dropped as the grounding policy says, the outcomes
  counted per article); an
  invalid answer counts a failure and is retried on the chain without that
  model -- except a truncated one, which is retried in halves on the same
  chain, because it was the answer that did not fit, not the model that
  failed.

Both leave the retry budget to ``RetryBudget`` and say which articles end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from tierbatch.policies.attempts import ArticleProgress, RetryBudget
from tierbatch.policies.config import ModelSpec, TierSpec
from tierbatch.policies.costs import attribute
from tierbatch.policies.grounding import (
    Grounding,
    GroundingAction,
    GroundingCounts,
    GroundingPolicy,
    PackTexts,
)
from tierbatch.policies.outcomes import (
    Abandoned,
    AuthFailed,
    BadRequest,
    CallOutcome,
    Cancelled,
    ModelNotFound,
    RateLimited,
    ServerError,
    Succeeded,
    TimedOut,
    Usage,
)
from tierbatch.policies.results import (
    AnswerProblem,
    ArticleAnswer,
    Done,
    Entity,
    Extraction,
    FailureReason,
    ProblemKind,
)

# ---- outcome -> action -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Note:
    """A log line the action deserves (level, event, fields): the policy
    knows what is worth saying, the actor owns the logger."""

    level: Literal["debug", "info", "warning"]
    event: str
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Answered:
    """The model answered: settle each article with ``settle_answers``."""

    usage: Usage
    note: Note | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Try the pack again on the same chain. With a ``reason`` the failure
    is recorded on every article and counts toward its budget."""

    reason: FailureReason | None = None
    detail: str = ""
    note: Note | None = None


@dataclass(frozen=True, slots=True)
class FailPack:
    """Every article of the pack ends failed now."""

    reason: FailureReason
    detail: str
    note: Note | None = None


@dataclass(frozen=True, slots=True)
class Halt:
    """The provider refused our credentials: stop taking work."""

    detail: str
    note: Note | None = None


@dataclass(frozen=True, slots=True)
class GiveBackPack:
    """The articles go back to the composer untried."""

    note: Note | None = None


Action = Answered | Retry | FailPack | Halt | GiveBackPack


def classify(outcome: CallOutcome, model: str, articles: int) -> Action:
    """The action for a pack of ``articles`` articles whose call to ``model``
    ended with ``outcome``."""
    match outcome:
        case Succeeded(usage):
            return Answered(usage)
        case RateLimited(scope):
            return Retry(
                note=Note("debug", "rate limited", {"articles": articles, "scope": str(scope)})
            )
        case ServerError(status, message):
            return Retry(
                FailureReason.RETRIES_EXHAUSTED,
                f"server error {status}: {message}",
                Note("debug", "server error", {"status": status, "detail": message}),
            )
        case TimedOut(after_s):
            return Retry(
                FailureReason.TIMEOUT,
                f"no answer from {model} in {after_s:.1f}s",
                Note("debug", "request timed out", {"after_s": after_s}),
            )
        case ModelNotFound():
            # The registry marks the model unavailable: the retry skips it.
            return Retry()
        case Cancelled():
            # Never sent (it waited too long for a connection of the
            # provider's pool, or dispatch stopped before its launch turn):
            # not the articles' fault, nor the model's.
            return Retry(note=Note("debug", "call not sent", {"articles": articles}))
        case BadRequest(message):
            return FailPack(
                FailureReason.BAD_REQUEST,
                f"{model} refused the request: {message}",
                Note("warning", "bad request", {"detail": message}),
            )
        case AuthFailed(status, message):
            return Halt(f"HTTP {status}: {message}")
        case Abandoned():
            # Cancelled by the runtime (stop, failure): back untried.
            return GiveBackPack()
        case _:  # an outcome type this policy does not know yet: count it
            return Retry(FailureReason.RETRIES_EXHAUSTED, f"{type(outcome).__name__}")


def acquire_failure(reason: str, detail: str) -> GiveBackPack | FailPack:
    """The registry could not grant the pack: "stopped" (shutting down or
    failed) gives it back; anything else means no model of its chain can
    ever take it."""
    if reason == "stopped":
        return GiveBackPack()
    return FailPack(
        FailureReason.NO_MODEL, f"no model of the chain can take it ({reason}): {detail}"
    )


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """After a failed call: who is retried, who ends now."""

    retry: tuple[ArticleProgress, ...]
    spent: tuple[ArticleProgress, ...]


def plan_retry(members: Sequence[ArticleProgress], action: Retry, budget: RetryBudget) -> RetryPlan:
    """Record ``action``'s failure (if any) on every member and split them
    by the retry budget."""
    if action.reason is not None:
        for member in members:
            member.failed(action.reason, action.detail)
    survivors, spent = budget.split(members)
    return RetryPlan(tuple(survivors), tuple(spent))


# ---- answer -> per-article results --------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPack:
    """Articles to pack again, on the tier's chain minus ``excluded``."""

    members: tuple[ArticleProgress, ...]
    excluded: frozenset[str]


@dataclass(frozen=True, slots=True)
class AnswerPlan:
    """A settled answer: the results to record, the articles whose budget is
    spent (they end failed), and the packs to try again. ``grounding`` sums
    the grounding outcomes of the ``done`` articles' entities."""

    done: tuple[Done, ...]
    spent: tuple[ArticleProgress, ...]
    retries: tuple[RetryPack, ...]
    grounding: GroundingCounts = field(default_factory=GroundingCounts)


DEFAULT_GROUNDING = GroundingPolicy()


def pack_texts(members: Sequence[ArticleProgress]) -> PackTexts:
    """The texts a request's answer is checked against: its articles'."""
    return PackTexts((a.id, a.title, a.text) for a in (m.item.article for m in members))


def ground_entities(
    texts: PackTexts, policy: GroundingPolicy, article_id: str, entities: Sequence[Entity]
) -> tuple[tuple[Entity, ...], GroundingCounts]:
    """``entities`` given for ``article_id`` as ``policy`` keeps them (a
    flagged one carries its outcome in ``Entity.flag``), and the count of
    every outcome before any drop."""
    kept: list[Entity] = []
    tally = dict.fromkeys(Grounding, 0)
    actions = {outcome: policy.action(outcome) for outcome in Grounding}
    for entity in entities:
        outcome = texts.check(article_id, entity.name)
        tally[outcome] += 1
        action = actions[outcome]
        if action is GroundingAction.KEEP:
            kept.append(entity)
        elif action is GroundingAction.FLAG:
            kept.append(replace(entity, flag=outcome))
    counts = GroundingCounts(
        tally[Grounding.GROUNDED], tally[Grounding.CROSS_ARTICLE], tally[Grounding.UNGROUNDED]
    )
    return tuple(kept), counts


def settle_answers(
    members: Sequence[ArticleProgress],
    answers: Mapping[str, ArticleAnswer],
    *,
    model: str,
    spec: ModelSpec,
    tier: TierSpec,
    excluded: frozenset[str],
    usage: Usage,
    budget: RetryBudget,
    now: float,
    grounding: GroundingPolicy = DEFAULT_GROUNDING,
    task_version: str = "",
) -> AnswerPlan:
    """Settle every member of a pack that ``model`` answered with ``answers``
    (by article id; an absent id is a ``MISSING`` answer); ``spec`` has its
    prices. ``now`` (steady time) measures each article's latency from when
    it was queued. Every extraction's entities are checked against the
    pack's texts and kept, flagged or dropped as ``grounding`` says; every
    result records ``task_version``."""
    shares = attribute(
        spec,
        [m.est_tokens for m in members],
        usage.input_tokens,
        usage.output_tokens,
        thinking_tokens=usage.thinking_tokens,
        cached_tokens=usage.cached_tokens,
    )
    done: list[Done] = []
    invalid: list[ArticleProgress] = []
    truncated: list[ArticleProgress] = []
    texts: PackTexts | None = None
    total = GroundingCounts()
    for member, share in zip(members, shares, strict=True):
        article = member.item.article
        answer = answers.get(article.id, AnswerProblem(ProblemKind.MISSING))
        if isinstance(answer, Extraction):
            if texts is None:
                texts = pack_texts(members)
            entities, counts = ground_entities(texts, grounding, article.id, answer.entities)
            total += counts
            done.append(
                Done(
                    article_id=article.id,
                    entities=entities,
                    model=model,
                    tier=tier.name,
                    attempts=member.attempts,
                    input_tokens=share.input_tokens,
                    output_tokens=share.output_tokens,
                    latency_s=max(0.0, now - member.item.enqueued_at),
                    cost_usd=share.cost_usd,
                    fallback=model != tier.model,
                    metadata=article.metadata,
                    grounding=counts,
                    pack_size=len(members),
                    task_version=task_version,
                )
            )
            continue
        detail = f"{model}: {answer.kind}" + (f" ({answer.detail})" if answer.detail else "")
        member.failed(FailureReason.INVALID_ANSWER, detail)
        (truncated if answer.kind is ProblemKind.TRUNCATED else invalid).append(member)
    spent: list[ArticleProgress] = []
    retries: list[RetryPack] = []
    for group, is_truncated in ((truncated, True), (invalid, False)):
        survivors, ended = budget.split(group)
        spent.extend(ended)
        if not survivors:
            continue
        if is_truncated and len(survivors) > 1:
            half = (len(survivors) + 1) // 2
            for part in (survivors[:half], survivors[half:]):
                _cap(part, len(part))
                retries.append(RetryPack(tuple(part), excluded))
        else:
            if is_truncated:
                # A lone truncated article cannot be split: another model
                # may answer it more briefly, alone.
                _cap(survivors, 1)
            retries.append(RetryPack(tuple(survivors), excluded | {model}))
    return AnswerPlan(tuple(done), tuple(spent), tuple(retries), total)


def _cap(members: Sequence[ArticleProgress], size: int) -> None:
    """Keep ``members`` in packs of at most ``size`` from now on."""
    for member in members:
        member.pack_cap = size if member.pack_cap is None else min(member.pack_cap, size)
