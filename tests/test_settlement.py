"""The extractor's decisions after a call: outcome -> action, the retry
budget, answers -> results, truncation splits and per-article costs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.policies.articles import Article
from tierbatch.policies.attempts import ArticleProgress, RetryBudget
from tierbatch.policies.composition import Queued
from tierbatch.policies.config import ModelSpec, RetryConfig, TierSpec
from tierbatch.policies.costs import article_share, attribute, cost_usd
from tierbatch.policies.grounding import (
    Grounding,
    GroundingAction,
    GroundingCounts,
    GroundingPolicy,
)
from tierbatch.policies.outcomes import (
    Abandoned,
    AuthFailed,
    BadRequest,
    Cancelled,
    ModelNotFound,
    RateLimited,
    RateLimitScope,
    ServerError,
    Succeeded,
    TimedOut,
    Usage,
)
from tierbatch.policies.results import (
    AnswerProblem,
    Done,
    Entity,
    EntityType,
    Extraction,
    FailureReason,
    ProblemKind,
)
from tierbatch.policies.settlement import (
    Answered,
    FailPack,
    GiveBackPack,
    Halt,
    Retry,
    acquire_failure,
    classify,
    plan_retry,
    settle_answers,
)

SPEC = ModelSpec("flash", 10, 0, 0, price_in_per_m=0.3, price_out_per_m=2.5)
TIER = TierSpec("warm", 0.3, "pro", "flash", 6)
ENTITY = Entity("Acme", EntityType.ORGANISATION, 0.5)


def progress(i: int, tokens: int = 100, *, attempts: int = 1, at: float = 0.0) -> ArticleProgress:
    article = Article(f"a{i}", "Acme said so.", metadata={"n": i})
    return ArticleProgress(Queued(article, 0.5, 1, 1, at, i), tokens, attempts=attempts)


# ---- outcome -> action ------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Succeeded(Usage(10, 2)), Answered(Usage(10, 2))),
        (RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 3.0), Retry()),
        (
            ServerError(503, "busy"),
            Retry(FailureReason.RETRIES_EXHAUSTED, "server error 503: busy"),
        ),
        (TimedOut(12.34), Retry(FailureReason.TIMEOUT, "no answer from flash in 12.3s")),
        (ModelNotFound("gone"), Retry()),
        (Cancelled(), Retry()),
        (
            BadRequest("too long"),
            FailPack(FailureReason.BAD_REQUEST, "flash refused the request: too long"),
        ),
        (AuthFailed(403, "bad key"), Halt("HTTP 403: bad key")),
        (Abandoned(), GiveBackPack()),
    ],
)
def test_every_outcome_has_its_action(outcome, expected):
    action = classify(outcome, "flash", 3)
    assert type(action) is type(expected)
    for name in ("usage", "reason", "detail"):
        if hasattr(expected, name):
            assert getattr(action, name) == getattr(expected, name)


def test_actions_say_what_is_worth_logging():
    limited = classify(RateLimited(RateLimitScope.TOKENS_PER_MINUTE, None), "flash", 3)
    assert limited.note is not None and limited.note.level == "debug"
    assert dict(limited.note.fields) == {"articles": 3, "scope": "tokens_per_minute"}
    bad = classify(BadRequest("no"), "flash", 1)
    assert bad.note is not None and bad.note.level == "warning"
    assert classify(ModelNotFound("x"), "flash", 1).note is None


def test_an_unknown_outcome_is_retried_and_counted():
    class Strange:
        pass

    action = classify(Strange(), "flash", 1)  # type: ignore[arg-type]
    assert action == Retry(FailureReason.RETRIES_EXHAUSTED, "Strange")


def test_acquire_failures():
    assert isinstance(acquire_failure("stopped", "shutting down"), GiveBackPack)
    failed = acquire_failure("no_route", "every model unavailable")
    assert failed == FailPack(
        FailureReason.NO_MODEL,
        "no model of the chain can take it (no_route): every model unavailable",
    )


# ---- retry budget -------------------------------------------------------------------


def test_retry_counts_failures_only_when_the_articles_are_to_blame():
    budget = RetryBudget(max_attempts=10, max_failures=2)
    members = [progress(0), progress(1)]
    plan = plan_retry(members, Retry(), budget)  # e.g. a 429
    assert plan.retry == tuple(members) and all(m.failures == 0 for m in members)
    plan = plan_retry(members, Retry(FailureReason.TIMEOUT, "slow"), budget)
    assert all(m.failures == 1 for m in members) and plan.retry == tuple(members)
    plan = plan_retry(members, Retry(FailureReason.TIMEOUT, "slow again"), budget)
    assert plan.spent == tuple(members) and not plan.retry
    result = members[0].result("warm")
    assert (result.reason, result.detail, result.attempts) == (
        FailureReason.TIMEOUT,
        "slow again",
        1,
    )
    assert result.metadata == {"n": 0}


def test_budget_from_config():
    assert RetryBudget.of(RetryConfig(max_attempts=3, max_failures=2)) == RetryBudget(3, 2)


outcomes_st = st.sampled_from(
    [
        Succeeded(Usage(100, 10)),
        RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 1.0),
        ServerError(500, "x"),
        TimedOut(1.0),
        ModelNotFound("x"),
        Cancelled(),
    ]
)
answers_st = st.sampled_from(
    [Extraction((ENTITY,))] + [AnswerProblem(kind) for kind in ProblemKind]
)


@given(
    st.integers(1, 6),
    st.integers(1, 5),
    st.integers(1, 6),
    st.lists(st.tuples(outcomes_st, st.lists(answers_st, min_size=6, max_size=6)), max_size=80),
)
def test_the_retry_budget_always_terminates(max_attempts, max_failures, n, script):
    """Carry out the extractor's loop with the pure policies on any sequence of
    outcomes and answers: every article ends (done or failed) within
    ``max_attempts`` calls, and exactly once."""
    budget = RetryBudget(max_attempts, max_failures)
    packs: list[tuple[list[ArticleProgress], frozenset[str]]] = [
        ([progress(i, attempts=0) for i in range(n)], frozenset())
    ]
    ended: list[str] = []
    calls = 0
    steps = iter(script)
    while packs:
        members, excluded = packs.pop(0)
        outcome, answers = next(steps, (Succeeded(Usage(1, 1)), [Extraction((ENTITY,))] * 6))
        calls += 1
        for member in members:
            member.tried("flash")
            assert member.attempts <= max_attempts, "a spent article was sent again"
        action = classify(outcome, "flash", len(members))
        if isinstance(action, Answered):
            by_id = {m.article_id: answers[i % 6] for i, m in enumerate(members)}
            plan = settle_answers(
                members, by_id, model="flash", spec=SPEC, tier=TIER, excluded=frozenset(),
                usage=action.usage, budget=budget, now=1.0,
            )  # fmt: skip
            ended += [d.article_id for d in plan.done] + [m.article_id for m in plan.spent]
            packs += [(list(r.members), r.excluded) for r in plan.retries]
        else:
            assert isinstance(action, Retry)
            retry = plan_retry(members, action, budget)
            ended += [m.article_id for m in retry.spent]
            if retry.retry:
                packs.append((list(retry.retry), excluded))
        assert calls <= n * max_attempts, "the loop does not terminate"
    assert sorted(ended) == sorted(f"a{i}" for i in range(n))


# ---- answers -> results ---------------------------------------------------------------


def test_answers_become_results_with_their_share_of_tokens_and_cost():
    members = [progress(0, 100, at=1.0), progress(1, 300, at=2.0), progress(2, 100)]
    answers = {
        "a0": Extraction((ENTITY,)),
        "a1": Extraction(()),
        "a2": AnswerProblem(ProblemKind.INVALID, "no salience"),
    }
    plan = settle_answers(
        members, answers, model="flash", spec=SPEC, tier=TIER, excluded=frozenset({"pro"}),
        usage=Usage(1_000, 50), budget=RetryBudget(10, 4), now=10.0,
    )  # fmt: skip
    first, second = plan.done
    assert first == Done(
        article_id="a0",
        entities=(ENTITY,),
        model="flash",
        tier="warm",
        attempts=1,
        input_tokens=200,
        output_tokens=10,
        latency_s=9.0,
        cost_usd=(200 * 0.3 + 10 * 2.5) / 1e6,
        fallback=True,
        grounding=GroundingCounts(grounded=1),
        pack_size=3,
    )
    assert first.metadata == {"n": 0}
    assert (second.input_tokens, second.output_tokens) == (600, 30)
    assert not plan.spent
    (retry,) = plan.retries
    assert [m.article_id for m in retry.members] == ["a2"]
    assert retry.excluded == frozenset({"pro", "flash"})  # not that model again
    assert members[2].last_reason is FailureReason.INVALID_ANSWER
    assert members[2].last_detail == "flash: invalid (no salience)"
    assert members[2].failures == 1


def test_a_missing_answer_counts_as_missing():
    plan = settle_answers(
        [progress(0)], {}, model="flash", spec=SPEC, tier=TIER, excluded=frozenset(),
        usage=Usage(10, 1), budget=RetryBudget(10, 1), now=0.0,
    )  # fmt: skip
    assert not plan.done and not plan.retries
    (spent,) = plan.spent
    assert spent.result("warm").detail == "flash: missing"


def test_truncated_answers_are_retried_in_halves_on_the_same_chain():
    members = [progress(i) for i in range(5)]
    answers = {m.article_id: AnswerProblem(ProblemKind.TRUNCATED) for m in members}
    plan = settle_answers(
        members, answers, model="flash", spec=SPEC, tier=TIER, excluded=frozenset({"pro"}),
        usage=Usage(100, 8192), budget=RetryBudget(10, 5), now=0.0,
    )  # fmt: skip
    assert [[m.article_id for m in r.members] for r in plan.retries] == [
        ["a0", "a1", "a2"],
        ["a3", "a4"],
    ]
    assert all(r.excluded == frozenset({"pro"}) for r in plan.retries)
    # Merging must not rebuild the pack that did not fit.
    assert [m.pack_cap for m in members] == [3, 3, 3, 2, 2]


def test_a_lone_truncated_article_moves_to_another_model_alone():
    member = progress(0)
    plan = settle_answers(
        [member], {"a0": AnswerProblem(ProblemKind.TRUNCATED)}, model="flash", spec=SPEC,
        tier=TIER, excluded=frozenset(), usage=Usage(100, 8192), budget=RetryBudget(10, 5),
        now=0.0,
    )  # fmt: skip
    (retry,) = plan.retries
    assert retry.excluded == frozenset({"flash"}) and member.pack_cap == 1


# ---- costs --------------------------------------------------------------------------


@given(st.integers(0, 10**7), st.integers(0, 10**6), st.floats(0, 100), st.floats(0, 100))
def test_cost_is_the_old_inline_formula(t_in, t_out, price_in, price_out):
    """The extractor once priced each article inline; both the extractor and
    the summary now use ``cost_usd``, with the very same arithmetic."""
    spec = ModelSpec("m", 1, 1, 0, price_in_per_m=price_in, price_out_per_m=price_out)
    assert cost_usd(spec, t_in, t_out) == (t_in * price_in + t_out * price_out) / 1e6


@given(
    st.lists(st.integers(1, 5_000), min_size=1, max_size=12),
    st.integers(0, 10**6),
    st.integers(0, 10**5),
)
def test_article_shares_are_the_old_per_article_arithmetic(weights, tokens_in, tokens_out):
    shares = attribute(SPEC, weights, tokens_in, tokens_out)
    total = max(1, sum(weights))
    for weight, share in zip(weights, shares, strict=True):
        s = weight / total
        t_in, t_out = round(tokens_in * s), round(tokens_out * s)
        assert (share.input_tokens, share.output_tokens) == (t_in, t_out)
        assert share.cost_usd == (t_in * SPEC.price_in_per_m + t_out * SPEC.price_out_per_m) / 1e6


def test_negative_usage_costs_nothing():
    share = article_share(SPEC, 1, 1, -10, 5)
    assert share.input_tokens == -10
    assert share.cost_usd == cost_usd(SPEC, 0, 5)


# ---- grounding -----------------------------------------------------------------------


def _article(i: int, title: str, text: str) -> ArticleProgress:
    return ArticleProgress(Queued(Article(f"g{i}", text, title=title), 0.5, 1, 1, 0.0, i), 100)


GROUNDING_PACK = [
    _article(0, "Fed meets", "Jerome Powell spoke in Zürich."),
    _article(1, "Storm", "Buses stopped in Lisbon."),
]


def _entity(name: str) -> Entity:
    return Entity(name, EntityType.OTHER, 0.5)


def _settle(answers, policy=None):
    return settle_answers(
        GROUNDING_PACK, answers, model="flash", spec=SPEC, tier=TIER, excluded=frozenset(),
        usage=Usage(100, 10), budget=RetryBudget(10, 4), now=1.0,
        grounding=policy or GroundingPolicy(),
    )  # fmt: skip


def test_every_entity_is_checked_against_the_pack_by_default_kept_dropped_or_flagged():
    plan = _settle(
        {
            "g0": Extraction((_entity("Jerome Powell"), _entity("Lisbon"), _entity("Lagarde"))),
            "g1": Extraction((_entity("lisbon"), _entity("bus"))),
        }
    )
    first, second = plan.done
    assert first.entities == (
        _entity("Jerome Powell"),
        Entity("Lagarde", EntityType.OTHER, 0.5, flag=Grounding.UNGROUNDED),
    )  # Lisbon is the other article's: dropped; Lagarde is in neither: flagged
    assert first.grounding == GroundingCounts(grounded=1, cross_article=1, ungrounded=1)
    assert second.entities == (_entity("lisbon"), _entity("bus"))
    assert second.grounding == GroundingCounts(grounded=2)
    assert (first.pack_size, second.pack_size) == (2, 2)
    assert plan.grounding == GroundingCounts(grounded=3, cross_article=1, ungrounded=1)


def test_the_configured_actions_decide_each_outcome():
    keep_all = GroundingPolicy(cross_article=GroundingAction.FLAG, ungrounded=GroundingAction.DROP)
    plan = _settle({"g0": Extraction((_entity("Lisbon"), _entity("Lagarde")))}, keep_all)
    (done,) = plan.done
    assert done.entities == (Entity("Lisbon", EntityType.OTHER, 0.5, flag=Grounding.CROSS_ARTICLE),)
    assert done.grounding == GroundingCounts(cross_article=1, ungrounded=1)  # before the drop
    assert [m.article_id for r in plan.retries for m in r.members] == ["g1"]  # missing answer
