"""Which tiers the composer holds back (``policies.feeding``), and a held
tier's slots in a batch going to the others (``policies.composition``)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierbatch.policies.articles import Article
from tierbatch.policies.composition import Composer
from tierbatch.policies.config import TierSpec
from tierbatch.policies.feeding import CONTENDED, FEED_AHEAD, TierFeed, TierFeedShape
from tierbatch.policies.tiers import TierLadder

HOT, COLD = 0, 1
SHAPES = (TierFeedShape(per_window=40.0, per_request=4), TierFeedShape(math.inf, 10))


def test_a_tier_is_held_at_its_mark_only_while_room_is_contended() -> None:
    feed = TierFeed(SHAPES, window_s=60.0)
    mark = FEED_AHEAD * 40.0
    assert feed.mark(HOT, 0.0) == mark
    contended_room = int(math.ceil(mark / 4) / CONTENDED)  # hot's packs alone contend it
    assert feed.held((int(mark), 0), contended_room, 0.0) == {HOT}
    assert feed.held((int(mark) - 1, 0), contended_room, 0.0) == frozenset()
    assert feed.held((int(mark), 0), 10 * contended_room, 0.0) == frozenset()  # room to spare


def test_a_tier_without_a_limit_is_never_held() -> None:
    feed = TierFeed(SHAPES, window_s=60.0)
    assert feed.mark(COLD, 0.0) == math.inf
    assert feed.held((0, 10_000), 1, 0.0) == frozenset()


def test_what_a_tier_finished_in_the_last_window_raises_its_mark_for_a_window() -> None:
    feed = TierFeed(SHAPES, window_s=60.0)
    feed.finished([HOT] * 100, 10.0)  # its fallbacks served it beyond pro's 40
    assert feed.mark(HOT, 30.0) == FEED_AHEAD * 100
    assert feed.mark(HOT, 70.0) == FEED_AHEAD * 40.0  # forgotten a window later


@given(
    out=st.tuples(st.integers(0, 1000), st.integers(0, 1000)),
    room=st.integers(1, 500),
    done=st.lists(st.tuples(st.sampled_from([HOT, COLD]), st.floats(0, 100)), max_size=50),
)
def test_a_held_tier_always_holds_at_least_its_mark(
    out: tuple[int, int], room: int, done: list[tuple[int, float]]
) -> None:
    feed = TierFeed(SHAPES, window_s=60.0)
    for tier, at in sorted(done, key=lambda d: d[1]):
        feed.finished([tier], at)
    for tier in feed.held(out, room, 100.0):
        assert out[tier] >= feed.mark(tier, 100.0) >= 2 * SHAPES[tier].per_request


def test_bad_feed_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        TierFeed(SHAPES, window_s=0.0)
    with pytest.raises(ValueError, match="ahead"):
        TierFeed(SHAPES, window_s=1.0, ahead=0.5)


def composer() -> Composer:
    ladder = TierLadder(
        (TierSpec("hot", 0.5, "m-pro", None, 4), TierSpec("cold", 0.0, "m-lite", None, 10)),
        "m-lite",
    )
    queues = Composer(ladder, {"hot": 4, "cold": 10}, aging_s=math.inf)
    for i in range(60):
        queues.push(Article(id=f"h{i}", text="t"), 0.9, 0.0)
        queues.push(Article(id=f"c{i}", text="t"), 0.1, 0.0)
    return queues


def test_a_held_tiers_slots_go_to_the_others_and_all_held_gives_nothing() -> None:
    queues = composer()
    mixed = queues.next_batch(0.0)
    assert mixed is not None and {len(v) for v in mixed.by_tier().values()} == {4, 10}
    cold_only = queues.next_batch(0.0, held={HOT})
    assert cold_only is not None and set(cold_only.by_tier()) == {COLD} and len(cold_only) == 14
    assert queues.next_batch(0.0, held={HOT, COLD}) is None
    again = queues.next_batch(0.0)  # fed again: hot has its share back
    assert again is not None and len(again.by_tier()[HOT]) == 4


def test_a_primary_whose_tokens_limit_binds_first_sets_the_mark_by_tokens() -> None:
    shapes = (TierFeedShape(per_window=1800.0, per_request=6, tokens_per_window=600_000.0),)
    feed = TierFeed(shapes, window_s=60.0)
    assert feed.mark(0, 0.0) == FEED_AHEAD * 1800  # tokens unknown yet
    assert feed.mark(0, 0.0, tokens_per_article=400.0) == FEED_AHEAD * 1500
