"""The tier ladder: lookup by priority and by name, fallback chains, promotion."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.policies.config import TierSpec
from tierbatch.policies.tiers import TierLadder, UnknownTierError

LITE = "gemini-2.5-flash-lite"

TIERS = (
    TierSpec("cold", 0.0, "gemini-2.5-flash-lite"),
    TierSpec("hot", 0.7, "gemini-2.5-pro", "gemini-2.5-flash"),
    TierSpec("warm", 0.4, "gemini-2.5-flash", "gemini-2.5-flash"),
)


@pytest.fixture
def ladder() -> TierLadder:
    return TierLadder(TIERS, global_fallback=LITE)


def test_tiers_are_held_highest_first(ladder: TierLadder) -> None:
    assert ladder.names == ("hot", "warm", "cold")
    assert len(ladder) == 3
    assert ladder.spec(0).name == "hot"


@pytest.mark.parametrize(
    ("priority", "tier"),
    [(1.0, "hot"), (0.7, "hot"), (0.69, "warm"), (0.4, "warm"), (0.39, "cold"), (0.0, "cold")],
)
def test_index_for_uses_thresholds_inclusively(
    ladder: TierLadder, priority: float, tier: str
) -> None:
    assert ladder.names[ladder.index_for(priority)] == tier


def test_lowest_tier_catches_everything() -> None:
    ladder = TierLadder([TierSpec("a", 0.8, "m1"), TierSpec("b", 0.5, "m2")], "m3")
    assert ladder.index_for(0.1) == 1
    assert ladder.index_for(-3.0) == 1
    assert ladder.index_for(float("nan")) == 1


def test_by_name(ladder: TierLadder) -> None:
    assert ladder.by_name("hot") == 0
    assert ladder.by_name("cold") == 2
    with pytest.raises(UnknownTierError):
        ladder.by_name("lukewarm")


def test_chains_follow_the_seed_order_without_repeats(ladder: TierLadder) -> None:
    assert ladder.chain(0) == ("gemini-2.5-pro", "gemini-2.5-flash", LITE)
    assert ladder.chain(1) == ("gemini-2.5-flash", LITE)  # fallback equals the model
    assert ladder.chain(2) == (LITE,)  # the model is the global fallback


def test_promoted_is_one_tier_higher(ladder: TierLadder) -> None:
    assert ladder.promoted(2) == 1
    assert ladder.promoted(1) == 0
    assert ladder.promoted(0) == 0


def test_bad_indices_and_ladders_are_refused(ladder: TierLadder) -> None:
    with pytest.raises(IndexError):
        ladder.chain(3)
    with pytest.raises(IndexError):
        ladder.promoted(-1)
    with pytest.raises(ValueError, match="at least one tier"):
        TierLadder([], LITE)
    with pytest.raises(ValueError, match="duplicate"):
        TierLadder([TierSpec("a", 0.5, "m"), TierSpec("a", 0.1, "m")], LITE)


models = st.sampled_from(["m1", "m2", "m3", "m4"])
tier_specs = st.lists(
    st.builds(
        TierSpec,
        name=st.text(min_size=1, max_size=5),
        min_priority=st.floats(min_value=0.0, max_value=1.0),
        model=models,
        fallback_model=st.none() | models,
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda tier: tier.name,
)


@given(tier_specs, models)
def test_chain_has_no_repeats_and_keeps_order(tiers: list[TierSpec], fallback: str) -> None:
    ladder = TierLadder(tiers, fallback)
    for i, tier in enumerate(ladder.tiers):
        chain = ladder.chain(i)
        assert len(set(chain)) == len(chain)
        assert chain[0] == tier.model
        assert fallback in chain
        wanted = [m for m in (tier.model, tier.fallback_model, fallback) if m is not None]
        assert chain == tuple(dict.fromkeys(wanted))


@given(tier_specs, st.floats(min_value=-1.0, max_value=2.0))
def test_index_for_picks_the_highest_reached_tier(tiers: list[TierSpec], priority: float) -> None:
    ladder = TierLadder(tiers, "fb")
    index = ladder.index_for(priority)
    thresholds = [tier.min_priority for tier in ladder.tiers]
    assert thresholds == sorted(thresholds, reverse=True)
    if index < len(ladder) - 1:
        assert priority >= thresholds[index]
    assert all(priority < threshold for threshold in thresholds[:index])
    assert ladder.by_name(ladder.names[index]) == index
