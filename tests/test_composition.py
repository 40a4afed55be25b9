"""The composer: tier mix by deficit round robin, aging, and never losing or
duplicating an article."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tierbatch.policies.articles import Article
from tierbatch.policies.composition import AlreadyQueuedError, Batch, Composer, Queued
from tierbatch.policies.config import TierSpec
from tierbatch.policies.tiers import TierLadder

LADDER = TierLadder(
    [
        TierSpec("hot", 0.7, "gemini-2.5-pro", "gemini-2.5-flash"),
        TierSpec("warm", 0.4, "gemini-2.5-flash"),
        TierSpec("cold", 0.0, "gemini-2.5-flash-lite"),
    ],
    global_fallback="gemini-2.5-flash-lite",
)
PRIORITY = {0: 0.9, 1: 0.5, 2: 0.1}  # a priority inside each tier
T0 = 1_750_000_000.0


def article(article_id: str) -> Article:
    return Article(id=article_id, text=f"text of {article_id}")


def fill(composer: Composer, tier: int, count: int, now: float = T0, tag: str = "") -> None:
    for i in range(count):
        composer.push(article(f"{tag}t{tier}-{i}"), PRIORITY[tier], now)


def tiers_of(batch: Batch | None) -> Counter[int]:
    assert batch is not None
    return Counter(item.tier for item in batch.items)


def composer(hot: int = 2, warm: int = 1, cold: int = 1, aging_s: float = math.inf) -> Composer:
    return Composer(LADDER, {"hot": hot, "warm": warm, "cold": cold}, aging_s)


# -- worked examples -------------------------------------------------------


def test_nothing_queued_gives_no_batch() -> None:
    assert composer().next_batch(T0) is None


def test_each_batch_follows_the_mix() -> None:
    comp = composer(hot=2, warm=1, cold=1)
    for tier in range(3):
        fill(comp, tier, 10)
    for batch_id in (1, 2, 3):
        batch = comp.next_batch(T0)
        assert batch is not None
        assert batch.batch_id == batch_id
        assert tiers_of(batch) == {0: 2, 1: 1, 2: 1}
        assert [item.tier for item in batch.items] == [0, 0, 1, 2]  # grouped by tier
    assert comp.depth_by_tier() == {"hot": 4, "warm": 7, "cold": 7}
    assert len(comp) == 18


def test_highest_priority_first_then_oldest() -> None:
    comp = composer(hot=3, warm=0, cold=0)
    comp.push(article("low"), 0.75, T0)
    comp.push(article("tie-old"), 0.8, T0)
    comp.push(article("top"), 0.95, T0 + 1)
    comp.push(article("tie-new"), 0.8, T0 + 2)
    batch = comp.next_batch(T0 + 3)
    assert batch is not None
    assert [item.article.id for item in batch.items] == ["top", "tie-old", "tie-new"]


def test_slots_of_an_empty_tier_go_to_the_highest_other_tier() -> None:
    comp = composer(hot=2, warm=1, cold=1)
    fill(comp, 1, 10)
    fill(comp, 2, 10)
    # warm and cold take their one slot each; hot's two go to warm, the higher one.
    assert tiers_of(comp.next_batch(T0)) == {1: 3, 2: 1}


def test_a_short_tier_gives_what_it_has_and_the_rest_is_shared_out() -> None:
    comp = composer(hot=2, warm=1, cold=1)
    fill(comp, 0, 1)
    fill(comp, 1, 1)
    fill(comp, 2, 10)
    assert tiers_of(comp.next_batch(T0)) == {0: 1, 1: 1, 2: 2}
    assert tiers_of(comp.next_batch(T0)) == {2: 4}


def test_batch_is_never_short_while_work_waits() -> None:
    comp = composer()
    fill(comp, 2, 3)
    batch = comp.next_batch(T0, size=10)
    assert batch is not None
    assert len(batch) == 3
    assert comp.next_batch(T0) is None


def test_fractional_credit_carries_over() -> None:
    comp = composer(hot=1, warm=1, cold=1)
    for tier in range(3):
        fill(comp, tier, 10)
    # size 2 with three equal weights: 2/3 of a slot each per batch.
    counts: Counter[int] = Counter()
    for _ in range(3):
        counts += tiers_of(comp.next_batch(T0, size=2))
    assert counts == {0: 2, 1: 2, 2: 2}


def test_idle_tier_does_not_bank_credit() -> None:
    comp = composer(hot=1, warm=1, cold=0)
    fill(comp, 1, 30)
    for _ in range(5):
        assert tiers_of(comp.next_batch(T0)) == {1: 2}
    fill(comp, 0, 30)
    # Five idle batches earned hot nothing: the next batch is one each again.
    assert tiers_of(comp.next_batch(T0)) == {0: 1, 1: 1}


def test_weight_zero_tier_only_gets_leftovers() -> None:
    comp = composer(hot=1, warm=1, cold=0)
    for tier in range(3):
        fill(comp, tier, 3)
    assert tiers_of(comp.next_batch(T0)) == {0: 1, 1: 1}
    assert tiers_of(comp.next_batch(T0)) == {0: 1, 1: 1}
    assert tiers_of(comp.next_batch(T0)) == {0: 1, 1: 1}
    assert tiers_of(comp.next_batch(T0)) == {2: 2}


def test_aging_promotes_once_and_serves_aged_first() -> None:
    comp = composer(hot=1, warm=1, cold=1, aging_s=60)
    comp.push(article("old-cold"), PRIORITY[2], T0)
    comp.push(article("older-cold"), PRIORITY[2], T0 - 5)
    comp.push(article("warm-a"), 0.65, T0 + 30)
    fill(comp, 0, 5, now=T0 + 30)
    fill(comp, 2, 5, now=T0 + 30, tag="new")
    batch = comp.next_batch(T0 + 61)  # the first two colds waited > 60 s
    assert batch is not None
    warm = [item for item in batch.items if item.tier == 1]
    assert [item.article.id for item in warm] == ["older-cold"]  # aged first, oldest first
    assert warm[0].base_tier == 2
    assert warm[0].aged
    assert comp.depth_by_tier() == {"hot": 4, "warm": 2, "cold": 4}
    # Much later everything has waited: warm-a goes up to hot and is served
    # before hot's own articles; the colds go up to warm, and "old-cold",
    # aged already, stays in warm.
    later = comp.next_batch(T0 + 10_000, size=1)
    assert later is not None
    assert [(item.article.id, item.tier) for item in later.items] == [("warm-a", 0)]
    left = {item.article.id: item for item in comp.drain_all()}
    assert left["old-cold"].tier == 1
    assert left["newt2-1"].tier == 1
    assert left["t0-1"].tier == 0
    assert not left["t0-1"].aged


def test_requeue_keeps_place_and_is_idempotent() -> None:
    comp = composer(hot=2, warm=0, cold=0)
    fill(comp, 0, 4)
    first = comp.next_batch(T0)
    assert first is not None
    assert comp.requeue(first.items) == 2
    assert comp.requeue(first.items) == 0  # already waiting: no duplicate
    again = comp.next_batch(T0 + 100)
    assert again is not None
    assert again.items == first.items  # same seq and enqueued_at, served first again
    assert len(comp) == 2


def test_requeued_aged_item_stays_aged() -> None:
    comp = composer(hot=1, warm=1, cold=1, aging_s=10)
    comp.push(article("c"), PRIORITY[2], T0)
    batch = comp.next_batch(T0 + 11)
    assert batch is not None
    (item,) = batch.items
    assert (item.tier, item.base_tier) == (1, 2)
    comp.requeue([item])
    assert comp.depth_by_tier() == {"hot": 0, "warm": 1, "cold": 0}


def test_push_refuses_an_article_already_waiting() -> None:
    comp = composer()
    comp.push(article("a"), 0.5, T0)
    with pytest.raises(AlreadyQueuedError) as caught:
        comp.push(article("a"), 0.9, T0)
    assert caught.value.article_id == "a"
    with pytest.raises(ValueError, match="NaN"):
        comp.push(article("b"), math.nan, T0)


def test_remove_and_drain() -> None:
    comp = composer()
    pushed = [comp.push(article(f"a{i}"), i / 10, T0 + i) for i in range(10)]
    removed = comp.remove("a3")
    assert removed == pushed[3]
    assert comp.remove("a3") is None
    assert "a3" not in comp
    assert "a4" in comp
    drained = comp.drain_all()
    assert drained == [item for item in pushed if item.article.id != "a3"]  # arrival order
    assert len(comp) == 0
    assert comp.next_batch(T0) is None


def test_push_queued_restores_items_and_seq() -> None:
    comp = composer()
    restored = Queued(article("x"), 0.9, tier=0, base_tier=1, enqueued_at=T0, seq=41)
    comp.push_queued(restored)
    fresh = comp.push(article("y"), 0.9, T0)
    assert fresh.seq == 42
    with pytest.raises(AlreadyQueuedError):
        comp.push_queued(restored)
    with pytest.raises(ValueError, match="ladder"):
        comp.push_queued(Queued(article("z"), 0.9, tier=3, base_tier=3, enqueued_at=T0, seq=1))
    with pytest.raises(ValueError, match="ladder"):
        comp.push_queued(Queued(article("z"), 0.9, tier=2, base_tier=1, enqueued_at=T0, seq=1))


@pytest.mark.parametrize(
    ("mix", "aging_s", "message"),
    [
        ({"tepid": 1}, 60.0, "unknown tiers"),
        ({"hot": -1, "warm": 2}, 60.0, ">= 0"),
        ({"hot": 0}, 60.0, "positive weight"),
        ({"hot": 1}, -1.0, "aging_s"),
        ({"hot": 1}, math.nan, "aging_s"),
    ],
)
def test_bad_settings_are_refused(mix: dict[str, int], aging_s: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Composer(LADDER, mix, aging_s)


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="batch size"):
        composer().next_batch(T0, size=0)


def test_aging_needs_strictly_more_than_aging_s() -> None:
    comp = composer(hot=0, warm=1, cold=1, aging_s=60)
    comp.push(article("c"), PRIORITY[2], T0)
    comp.push(article("w"), PRIORITY[1], T0 + 1)
    assert tiers_of(comp.next_batch(T0 + 60, size=1)) == {1: 1}  # "w": "c" has not aged
    assert tiers_of(comp.next_batch(T0 + 60.001, size=1)) == {1: 1}  # now it has


def test_lazy_deletion_keeps_memory_bounded() -> None:
    comp = composer(hot=1, warm=1, cold=1, aging_s=1e9)
    # One old, low-priority article stays at the head of the arrival heap
    # while thousands of newer ones are served past it or cancelled.
    comp.push(article("stuck"), 0.0, T0)
    for round_ in range(200):
        fill(comp, 2, 10, tag=f"r{round_}-")
        assert comp.remove(f"r{round_}-t2-9") is not None
        assert tiers_of(comp.next_batch(T0, size=9)) == {2: 9}
    assert list(comp.depth_by_tier().values()) == [0, 0, 1]
    queue = comp._tiers[2]  # stale rows of served items must not pile up
    assert len(queue.by_arrival) <= 100
    assert len(queue.by_priority) <= 100


# -- properties: the mix ---------------------------------------------------

weights = st.tuples(*[st.integers(min_value=0, max_value=5)] * 3).filter(lambda w: sum(w) > 0)


def plentiful(mix: tuple[int, int, int], per_tier: int) -> Composer:
    comp = Composer(LADDER, dict(zip(LADDER.names, mix, strict=True)), math.inf)
    for tier in range(3):
        fill(comp, tier, per_tier)
    return comp


@given(weights, st.integers(min_value=1, max_value=8))
def test_mix_is_exact_when_every_tier_has_work(mix: tuple[int, int, int], batches: int) -> None:
    comp = plentiful(mix, sum(mix) * batches)
    for _ in range(batches):
        counts = tiers_of(comp.next_batch(T0))
        assert [counts[k] for k in range(3)] == list(mix)


@given(weights, st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=40))
def test_long_run_shares_follow_the_mix(mix: tuple[int, int, int], size: int, batches: int) -> None:
    comp = plentiful(mix, size * batches)
    total = sum(mix)
    counts: Counter[int] = Counter()
    for done in range(1, batches + 1):
        counts += tiers_of(comp.next_batch(T0, size=size))
        for k in range(3):
            # Fractional credit carries over: never more than a slot off the exact share.
            assert abs(counts[k] - done * size * mix[k] / total) < 1


@given(weights, st.integers(min_value=1, max_value=20))
def test_every_weighted_tier_is_served_within_a_bound(mix: tuple[int, int, int], size: int) -> None:
    total = sum(mix)
    # Credit stays within (-W, (K-1)(W-1)] between batches, so a tier of weight w
    # is served at least every ceil((K(W-1)+1) / (size*w)) batches.
    bounds = {k: math.ceil((3 * (total - 1) + 1) / (size * w)) for k, w in enumerate(mix) if w}
    horizon = 3 * max(bounds.values())
    comp = plentiful(mix, size * horizon)
    last_served = dict.fromkeys(bounds, 0)
    for batch_no in range(1, horizon + 1):
        for k in tiers_of(comp.next_batch(T0, size=size)):
            if k in bounds:
                assert batch_no - last_served[k] <= bounds[k]
                last_served[k] = batch_no
    for k, bound in bounds.items():
        assert horizon - last_served[k] < bound


@given(
    weights,
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=2), st.integers(min_value=0, max_value=6)),
        max_size=30,
    ),
)
def test_leftover_slots_go_to_higher_tiers_first(
    mix: tuple[int, int, int], arrivals: list[tuple[int, int]]
) -> None:
    comp = Composer(LADDER, dict(zip(LADDER.names, mix, strict=True)), math.inf)
    for step, (tier, count) in enumerate(arrivals):
        fill(comp, tier, count, tag=f"s{step}-")
        depth = [comp.depth_by_tier()[name] for name in LADDER.names]
        batch = comp.next_batch(T0)
        if not any(depth):
            assert batch is None
            continue
        counts = tiers_of(batch)
        assert sum(counts.values()) == min(sum(mix), sum(depth))
        for k in range(3):
            assert counts[k] >= min(mix[k], depth[k])  # its share, as far as it has work
            if counts[k] > mix[k]:  # extra slots only once every higher tier ran dry
                assert all(counts[j] == depth[j] for j in range(k))


# -- property: nothing lost, nothing duplicated, order kept ------------------


class ComposerMachine(RuleBasedStateMachine):
    """Random pushes, batches, requeues, cancellations, restarts and time steps,
    checked against a plain model of which article is where."""

    held = Bundle("held")

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.counter = 0
        self.waiting: dict[str, Queued] = {}  # what the composer should hold
        self.in_flight: dict[str, Queued] = {}  # emitted, not finished
        self.finished: set[str] = set()
        self.removed: set[str] = set()

    @initialize(mix=weights, aging_s=st.sampled_from([5.0, 40.0, math.inf]))
    def start(self, mix: tuple[int, int, int], aging_s: float) -> None:
        self.mix = mix
        self.aging_s = aging_s
        self.comp = Composer(LADDER, dict(zip(LADDER.names, mix, strict=True)), aging_s)

    def served_tier(self, item: Queued) -> int:
        """The tier the composer must serve ``item`` as at ``self.now``."""
        if not item.aged and item.base_tier > 0 and self.now - item.enqueued_at > self.aging_s:
            return item.base_tier - 1
        return item.tier

    @rule(priority=st.floats(min_value=0.0, max_value=1.0))
    def push(self, priority: float) -> None:
        article_id = f"a{self.counter}"
        self.counter += 1
        item = self.comp.push(article(article_id), priority, self.now)
        assert item.tier == item.base_tier == LADDER.index_for(priority)
        assert item.enqueued_at == self.now
        assert all(item.seq > other.seq for other in self.waiting.values())
        self.waiting[article_id] = item

    @precondition(lambda self: bool(self.waiting))
    @rule(data=st.data())
    def push_duplicate(self, data: st.DataObject) -> None:
        article_id = data.draw(st.sampled_from(sorted(self.waiting)))
        with pytest.raises(AlreadyQueuedError):
            self.comp.push(article(article_id), 0.5, self.now)

    @rule(dt=st.floats(min_value=0.0, max_value=30.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(target=held, size=st.none() | st.integers(min_value=1, max_value=8))
    def batch(self, size: int | None) -> tuple[Queued, ...]:
        expected = {aid: self.served_tier(item) for aid, item in self.waiting.items()}
        batch = self.comp.next_batch(self.now, size)
        if not self.waiting:
            assert batch is None
            return ()
        assert batch is not None
        ids = [item.article.id for item in batch.items]
        note(f"batch {ids}")
        assert len(ids) == len(set(ids))
        assert len(ids) == min(size or sum(self.mix), len(self.waiting))
        for item in batch.items:
            original = self.waiting.pop(item.article.id)  # KeyError = never queued
            assert item == replace(original, tier=expected[item.article.id])
            self.in_flight[item.article.id] = item
        for aid, item in self.waiting.items():
            self.waiting[aid] = replace(item, tier=expected[aid])
        self.check_order(batch)
        return batch.items

    def check_order(self, batch: Batch) -> None:
        """Inside a tier: aged items first, oldest first; then by priority."""
        for tier, items in batch.by_tier().items():
            aged = [item for item in items if item.aged]
            rest = [item for item in items if not item.aged]
            assert items == tuple(aged + rest)
            aged_keys = [(item.enqueued_at, item.seq) for item in aged]
            rest_keys = [(-item.priority, item.seq) for item in rest]
            assert aged_keys == sorted(aged_keys)
            assert rest_keys == sorted(rest_keys)
            left = [item for item in self.waiting.values() if item.tier == tier]
            if rest:
                assert not any(item.aged for item in left)
                assert all((-i.priority, i.seq) > rest_keys[-1] for i in left if not i.aged)
            if aged:
                assert all((i.enqueued_at, i.seq) > aged_keys[-1] for i in left if i.aged)

    @rule(items=held, data=st.data())
    def requeue(self, items: tuple[Queued, ...], data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(items), max_size=4)) if items else []
        ids = {item.article.id for item in chosen}
        # A correct caller requeues what it holds, never what finished; what is
        # waiting already (requeued before) and repeats must be skipped.
        back = {aid: self.in_flight[aid] for aid in ids if aid in self.in_flight}
        waiting = [self.waiting[aid] for aid in ids if aid in self.waiting]
        put_back = self.comp.requeue([*back.values(), *waiting, *back.values()])
        assert put_back == len(back)
        for aid, item in back.items():
            del self.in_flight[aid]
            self.waiting[aid] = item

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        article_id = data.draw(st.sampled_from(sorted(self.in_flight)))
        del self.in_flight[article_id]
        self.finished.add(article_id)

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        candidates = [*sorted(self.waiting), "never-pushed"]
        article_id = data.draw(st.sampled_from(candidates))
        removed = self.comp.remove(article_id)
        if article_id in self.waiting:
            assert removed == self.waiting.pop(article_id)
            self.removed.add(article_id)
        else:
            assert removed is None

    @rule()
    def restart(self) -> None:
        """Drain to a durable queue and load it back, as across a restart."""
        drained = self.comp.drain_all()
        assert drained == sorted(self.waiting.values(), key=lambda item: item.seq)
        for item in drained:
            self.comp.push_queued(item)

    @invariant()
    def counts_agree(self) -> None:
        if not hasattr(self, "comp"):
            return
        assert len(self.comp) == len(self.waiting)
        depth = self.comp.depth_by_tier()
        assert depth == {
            name: sum(1 for item in self.waiting.values() if item.tier == k)
            for k, name in enumerate(LADDER.names)
        }
        assert all(aid in self.comp for aid in self.waiting)
        places = [set(self.waiting), set(self.in_flight), self.finished, self.removed]
        assert sum(len(place) for place in places) == self.counter  # none lost
        assert len(set().union(*places)) == self.counter  # none in two places

    def teardown(self) -> None:
        if not hasattr(self, "comp"):
            return
        # Everything still waiting comes out exactly once.
        emitted: list[str] = []
        while (batch := self.comp.next_batch(self.now + 1e6)) is not None:
            emitted.extend(item.article.id for item in batch.items)
        assert sorted(emitted) == sorted(self.waiting)


TestComposerMachine = ComposerMachine.TestCase
