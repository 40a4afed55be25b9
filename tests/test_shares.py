"""Tiers by share: the top fraction of recent priorities, on any feed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierbatch.policies.shares import ShareThresholds


def test_a_feed_below_every_fixed_threshold_still_fills_the_top_tier():
    rng = random.Random(7)
    shares = ShareThresholds([0.1, 0.3, None], [0.7, 0.4, 0.0], window=5000)
    tiers = [0, 0, 0]
    for _ in range(5000):
        p = rng.uniform(0.05, 0.45)  # nothing reaches 0.7 or 0.4
        shares.observe(p)
        tiers[shares.tier_for(p)] += 1
    assert tiers[0] / 5000 == pytest.approx(0.1, abs=0.03)
    assert tiers[1] / 5000 == pytest.approx(0.3, abs=0.04)
    hot, warm, cold = shares.thresholds()
    assert hot >= warm >= cold == 0.0


def test_fixed_and_share_tiers_mix_and_thresholds_never_rise_down_the_ladder():
    shares = ShareThresholds([None, 0.5, None], [0.3, 0.9, 0.0])
    for p in [0.1, 0.2, 0.25, 0.28] * 10:
        shares.observe(p)
    first, second, last = shares.thresholds()
    assert first == 0.3 and second <= first and last == 0.0


def test_bad_shares_are_refused_naming_the_tier():
    with pytest.raises(ValueError, match=r"tiers\[1\]\.share"):
        ShareThresholds([0.1, 1.5, None], [0, 0, 0])
    with pytest.raises(ValueError, match="add up"):
        ShareThresholds([0.6, 0.6, None], [0, 0, 0])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0, 1, allow_nan=False), min_size=50, max_size=400),
    st.floats(0.05, 0.5),
)
def test_the_top_tier_holds_about_its_share_of_the_window(priorities, share):
    thresholds = ShareThresholds([share, None], [0.5, 0.0], window=len(priorities))
    for p in priorities:
        thresholds.observe(p)
    top = thresholds.thresholds()[0]
    above = sum(1 for p in priorities if p >= top)
    # At least its share (ties and bin edges may add a few), and all of those
    # above the threshold's bin really rank in the top share.
    assert above >= share * len(priorities) - 1e-9
    strictly = sum(1 for p in priorities if p >= top + 1 / 1000)
    assert strictly <= share * len(priorities) + 1e-9
