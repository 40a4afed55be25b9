"""The pack quality monitor: warnings per (tier, model) window, and the
adaptive pack size that halves under cross-article entities and grows back
slowly over clean requests."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tierbatch.policies.config import GroundingConfig, TierSpec
from tierbatch.policies.grounding import GroundingCounts
from tierbatch.policies.pack_quality import GroundingTally, PackQuality
from tierbatch.policies.results import Done, Failed, FailureReason

TIERS = (
    TierSpec("hot", 0.5, "pro", None, 8, adaptive_pack=True),
    TierSpec("cold", 0.0, "lite", None, 8),
)
CONFIG = GroundingConfig(window_requests=4, cross_article_threshold=0.1)
CLEAN = GroundingCounts(grounded=10)
MIXED = GroundingCounts(grounded=7, cross_article=3)


def feed(quality: PackQuality, tier: str, model: str, counts: GroundingCounts, n: int):
    notes = []
    for _ in range(n):
        size = quality.pack_size(tier) or 8
        notes += quality.observe(tier, model, size, counts)
    return notes


def test_a_model_that_mixes_up_articles_is_warned_about_once_per_change_of_state():
    quality = PackQuality(TIERS, CONFIG)
    assert feed(quality, "cold", "lite", MIXED, 3) == []  # the window is not full yet
    (warning,) = feed(quality, "cold", "lite", MIXED, 10)
    assert (warning.level, warning.event) == ("warning", "model mixes up the articles of its packs")
    assert warning.fields["model"] == "lite" and warning.fields["tier"] == "cold"
    assert warning.fields["cross_article_share"] == 0.3
    (back,) = feed(quality, "cold", "lite", CLEAN, 4)
    assert (back.level, back.event) == ("info", "model keeps the articles of its packs apart")
    assert quality.pack_size("cold") is None  # not adaptive: packs as configured
    assert quality.sizes == {"hot": 8}


def test_an_adaptive_tier_halves_its_pack_size_down_to_one_under_cross_article_entities():
    quality = PackQuality(TIERS, CONFIG)
    sizes = []
    for _ in range(40):
        feed(quality, "hot", "pro", MIXED, 1)
        sizes.append(quality.pack_size("hot"))
    # A full window at each size before the next step: 8 -> 4 -> 2 -> 1.
    assert sizes[:3] == [8, 8, 8]
    assert sizes[3] == 4 and sizes[7] == 2 and sizes[11] == 1
    assert set(sizes[11:]) <= {1, 2}  # at 1 it tries 2 again after a window, and falls back


def test_the_pack_size_grows_back_one_article_per_clean_window():
    quality = PackQuality(TIERS, CONFIG)
    feed(quality, "hot", "pro", MIXED, 12)
    assert quality.pack_size("hot") == 1
    notes = feed(quality, "hot", "pro", CLEAN, 8)
    assert quality.pack_size("hot") == 3
    assert [n.event for n in notes] == [
        "model keeps the articles of its packs apart",
        "pack size raised",
        "pack size raised",
    ]
    feed(quality, "hot", "pro", CLEAN, 100)
    assert quality.pack_size("hot") == 8  # never above the configured size


@given(st.lists(st.integers(0, 40), max_size=200))
def test_without_cross_article_entities_the_pack_size_stays_at_full_size(entities):
    quality = PackQuality(TIERS, CONFIG)
    for n in entities:
        assert quality.observe("hot", "pro", 8, GroundingCounts(grounded=n, ungrounded=n)) == []
        assert quality.pack_size("hot") == 8


def test_a_share_between_half_and_the_whole_threshold_neither_grows_nor_shrinks():
    quality = PackQuality(TIERS, CONFIG)
    feed(quality, "hot", "pro", MIXED, 4)
    assert quality.pack_size("hot") == 4
    feed(quality, "hot", "pro", GroundingCounts(grounded=93, cross_article=7), 40)
    assert quality.pack_size("hot") == 4


def test_the_tally_groups_results_by_tier_model_and_pack_size():
    tally = GroundingTally()
    done = Done("a", (), "pro", "hot", 1, 1, 1, 0.1, grounding=MIXED, pack_size=4)
    old = Done("b", (), "pro", "hot", 1, 1, 1, 0.1)  # before the check: no counts
    failed = Failed("c", FailureReason.TIMEOUT, "", "hot", 1)
    tally.add([done, done, old, failed])
    (row,) = tally.rows()
    assert (row.tier, row.model, row.pack_size, row.articles) == ("hot", "pro", 4, 2)
    assert row.counts == GroundingCounts(14, 6, 0)
    assert (row.cross_article_share, row.ungrounded_share) == (0.3, 0.0)


def test_requests_packed_before_a_step_or_alone_do_not_decide_the_next():
    quality = PackQuality(TIERS, CONFIG)
    feed(quality, "hot", "pro", MIXED, 4)
    assert quality.pack_size("hot") == 4
    for _ in range(10):  # still in flight at the old size, and lone articles
        quality.observe("hot", "pro", 8, MIXED)
        quality.observe("hot", "pro", 1, CLEAN)
    assert quality.pack_size("hot") == 4
    notes = [n for _ in range(4) for n in quality.observe("hot", "pro", 3, MIXED)]
    assert quality.pack_size("hot") == 2  # requests at the new size decide
    assert notes[-1].fields == {
        "tier": "hot",
        "model": "pro",
        "from": 4,
        "to": 2,
        "cross_article_share": 0.3,
    }
