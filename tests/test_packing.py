"""The packing policy: chunks within the limits, and merging waiting packs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.policies.articles import Article
from tierbatch.policies.attempts import ArticleProgress
from tierbatch.policies.composition import Queued
from tierbatch.policies.config import RuntimeConfig, TierSpec
from tierbatch.policies.packing import (
    Pack,
    PackLimits,
    article_tokens,
    chunk,
    fallback_cutoff,
    merge_waiting,
    pack_cap,
    plan_merge,
    request_overhead,
    request_tokens,
)
from tierbatch.policies.quota import Grant
from tierbatch.policies.tokens import TokenEstimator


@dataclass(frozen=True)
class W:
    name: str
    est_tokens: int


def member(i: int, tokens: int, *, at: float = 0.0, cap: int | None = None) -> ArticleProgress:
    item = Queued(Article(f"a{i}", "text"), 0.5, 0, 0, at, i)
    return ArticleProgress(item, tokens, pack_cap=cap)


limits_st = st.builds(
    PackLimits,
    max_articles=st.integers(1, 12),
    max_tokens=st.integers(1, 5_000),
    overhead=st.integers(0, 400),
)


@given(st.lists(st.integers(1, 3_000), max_size=60), limits_st)
def test_chunks_keep_every_member_once_in_order_within_the_limits(tokens, limits):
    members = [W(f"m{i}", t) for i, t in enumerate(tokens)]
    packs = chunk(members, limits)
    assert [m for pack in packs for m in pack] == members  # each once, in order
    for pack in packs:
        assert 1 <= len(pack) <= limits.max_articles
        # Only a lone member may pass the token budget: it must still go.
        assert len(pack) == 1 or request_tokens(pack, limits.overhead) <= limits.max_tokens


@given(st.lists(st.integers(1, 3_000), max_size=60), limits_st)
def test_chunks_are_closed_only_when_the_next_member_does_not_fit(tokens, limits):
    """Greedy: a pack is never closed while the next member would have fit."""
    members = [W(f"m{i}", t) for i, t in enumerate(tokens)]
    packs = chunk(members, limits)
    for pack, after in itertools.pairwise(packs):
        nxt = after[0]
        assert (
            len(pack) >= limits.max_articles
            or request_tokens(pack, limits.overhead) + nxt.est_tokens > limits.max_tokens
        )


def test_chunk_matches_the_tier_limits():
    tier = TierSpec("cold", 0.0, "lite", None, 3)
    limits = PackLimits.of(tier, RuntimeConfig(max_input_tokens_per_request=1_000), 100)
    assert limits == PackLimits(3, 1_000, 100)
    members = [W(str(i), 300) for i in range(7)]
    # 100 + 300 + 300 = 700; a third would make 1000: still fits; then the count closes it.
    assert [len(p) for p in chunk(members, limits)] == [3, 3, 1]
    heavy = [W("a", 400), W("b", 400), W("c", 400)]
    assert [len(p) for p in chunk(heavy, limits)] == [2, 1]


def test_pack_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="max_articles"):
        PackLimits(0, 100)
    with pytest.raises(ValueError, match="max_tokens"):
        PackLimits(1, 0)
    with pytest.raises(ValueError, match="overhead"):
        PackLimits(1, 1, -1)


def test_article_tokens_are_the_requests_growth():
    estimator = TokenEstimator()
    article = Article("x", "y" * 400, title="t" * 40)
    overhead = request_overhead(estimator)
    assert overhead == estimator.estimate(0, 0)
    assert article_tokens(estimator, article) == estimator.estimate(440, 1) - overhead
    assert article_tokens(estimator, Article("e", "")) >= 1


# ---- merging -------------------------------------------------------------------


def grant(tokens: int) -> Grant:
    return Grant(1, "lite", 0.0, tokens)


def test_a_granted_pack_takes_from_its_oldest_waiting_siblings_first():
    limits = PackLimits(5, 10_000, 100)
    target = Pack(1, 0, [member(0, 10, at=5.0)])
    old = Pack(2, 0, [member(1, 10, at=1.0), member(2, 10, at=1.0)])
    new = Pack(3, 0, [member(3, 10, at=3.0), member(4, 10, at=3.0), member(5, 10, at=3.0)])
    moves = plan_merge(target, 110, [new, target, old], limits)
    assert [(m.donor, [x.article_id for x in m.members], m.emptied) for m in moves] == [
        (2, ["a1", "a2"], True),
        (3, ["a3", "a4"], False),
    ]


def test_only_waiting_siblings_of_the_same_tier_and_chain_give():
    limits = PackLimits(10, 10_000, 0)
    target = Pack(1, 0, [member(0, 1)], excluded=frozenset({"pro"}))
    other_tier = Pack(2, 1, [member(1, 1)], excluded=frozenset({"pro"}))
    other_chain = Pack(3, 0, [member(2, 1)])
    granted = Pack(4, 0, [member(3, 1)], excluded=frozenset({"pro"}), grant=grant(1))
    sibling = Pack(5, 0, [member(4, 1)], excluded=frozenset({"pro"}))
    moves = plan_merge(target, 1, [other_tier, other_chain, granted, sibling], limits)
    assert [m.donor for m in moves] == [5]


def test_merging_respects_the_token_budget_and_skips_what_does_not_fit():
    limits = PackLimits(10, 1_000, 100)
    target = Pack(1, 0, [member(0, 300)])
    donor = Pack(2, 0, [member(1, 700), member(2, 200), member(3, 500)])
    (move,) = plan_merge(target, 400, [donor], limits)
    assert [m.article_id for m in move.members] == ["a2"]  # 400 + 200 <= 1000
    assert not move.emptied


def test_halves_of_a_truncated_answer_are_not_merged_back():
    limits = PackLimits(10, 10_000, 0)
    first = Pack(1, 0, [member(0, 1, cap=2), member(1, 1, cap=2)])
    second = Pack(2, 0, [member(2, 1, cap=2), member(3, 1, cap=2)])
    fresh = Pack(3, 0, [member(4, 1), member(5, 1)])
    assert pack_cap(first.members, limits) == 2
    assert plan_merge(first, 2, [second, fresh], limits) == []
    # A fresh pack may take a capped article only while the pack stays within its cap.
    small = Pack(4, 0, [member(6, 1)])
    capped = Pack(5, 0, [member(7, 1, cap=2), member(8, 1, cap=2)])
    (move,) = plan_merge(small, 1, [capped], limits)
    assert [m.article_id for m in move.members] == ["a7"]


@st.composite
def waiting_packs(draw):
    limits = draw(limits_st)
    n = draw(st.integers(1, 8))
    packs: dict[int, Pack] = {}
    seq = 0
    for pack_id in range(1, n + 1):
        size = draw(st.integers(1, limits.max_articles))
        members = []
        for _ in range(size):
            cap = draw(st.none() | st.integers(1, limits.max_articles))
            members.append(
                member(seq, draw(st.integers(1, 800)), at=draw(st.floats(0, 9)), cap=cap)
            )
            seq += 1
        packs[pack_id] = Pack(
            pack_id,
            draw(st.integers(0, 1)),
            members,
            excluded=draw(st.sampled_from([frozenset(), frozenset({"pro"})])),
            grant=draw(st.none() | st.just(grant(1))),
            acquired_tokens=sum(m.est_tokens for m in members),
        )
    target_id = draw(st.sampled_from(sorted(packs)))
    return limits, packs, target_id


@given(waiting_packs())
def test_merging_keeps_every_article_exactly_once_and_within_the_limits(case):
    limits, packs, target_id = case
    target = packs[target_id]
    target.grant = None
    before = {id(m): m for p in packs.values() for m in p.members}
    untouchable = {
        p.pack_id: list(p.members)
        for p in packs.values()
        if p is not target
        and (p.grant is not None or p.tier != target.tier or p.excluded != target.excluded)
    }
    start_size = len(target.members)
    start_tokens = request_tokens(target.members, limits.overhead)
    tokens, emptied = merge_waiting(target, start_tokens, packs, limits)

    after = [m for p in packs.values() for m in p.members]
    assert len(after) == len(before) and {id(m) for m in after} == set(before)
    assert tokens == request_tokens(target.members, limits.overhead)
    for pack_id, members in untouchable.items():
        assert packs[pack_id].members == members
    assert sorted(emptied) == sorted(
        p.pack_id for p in packs.values() if p is not target and not p.members
    )
    if len(target.members) > start_size:  # it grew: within every limit
        assert len(target.members) <= pack_cap(target.members, limits)
        assert tokens <= limits.max_tokens


def test_a_fallback_grant_leaves_siblings_that_still_wait_for_the_primary():
    chain = ("pro", "flash", "lite")
    assert fallback_cutoff(chain, "pro", 30.0, 100.0) is None  # the primary: anyone
    assert fallback_cutoff(chain, "flash", 0.0, 100.0) is None  # no patience: anyone
    assert fallback_cutoff(chain, "flash", 30.0, 100.0) == 70.0
    limits = PackLimits(10, 10_000, 0)
    target = Pack(1, 0, [member(0, 1)], asked_at=10.0)
    patient_over = Pack(2, 0, [member(1, 1)], asked_at=60.0)
    still_patient = Pack(3, 0, [member(2, 1)], asked_at=90.0)
    moves = plan_merge(target, 1, [still_patient, patient_over], limits, asked_by=70.0)
    assert [m.donor for m in moves] == [2]
