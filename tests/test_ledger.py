"""The composer's ledger, without a thread: it never loses an article nor
records one twice, whatever the sequence of takes, results, give-backs,
crashes and shutdown."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tierbatch.policies.articles import Article
from tierbatch.policies.composition import Composer
from tierbatch.policies.config import TierSpec
from tierbatch.policies.ledger import Ledger
from tierbatch.policies.results import Done, Failed, FailureReason, TerminalResult
from tierbatch.policies.tally import ResultTally
from tierbatch.policies.tiers import TierLadder

TIERS = (
    TierSpec("hot", 0.66, "pro"),
    TierSpec("warm", 0.33, "flash"),
    TierSpec("cold", 0.0, "lite"),
)


def make_ledger(poison_after: int = 2, recent_limit: int = 1_000) -> Ledger:
    ladder = TierLadder(TIERS, "lite")
    queues = Composer(ladder, {"hot": 2, "warm": 1, "cold": 1}, aging_s=float("inf"))
    return Ledger(queues, poison_after, recent_limit=recent_limit)


def done(article_id: str, tier: str = "cold", model: str = "lite") -> Done:
    return Done(article_id, (), model, tier, 1, 10, 1, 0.1, fallback=model != "lite")


def failed(article_id: str) -> Failed:
    return Failed(article_id, FailureReason.TIMEOUT, "slow", "cold", 2)


class LedgerMachine(RuleBasedStateMachine):
    """A model of where every article should be, checked against the ledger."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = make_ledger()
        self.now = 0.0
        self.next_id = 0
        self.admitted: Counter[str] = Counter()
        self.terminal: Counter[str] = Counter()  # results the ledger accepted (or poison)
        self.handed_back: Counter[str] = Counter()  # take_returned / take_unfinished
        self.held: dict[int, set[str]] = {}  # by extractor, as the model sees it
        self.aside: set[str] = set()  # given back after begin_shutdown
        self.dead: set[int] = set()

    # -- moves -------------------------------------------------------------

    @rule(n=st.integers(1, 6), priority=st.floats(0, 1))
    def admit(self, n: int, priority: float) -> None:
        if self.ledger.shutting_down:
            return
        for _ in range(n):
            article = Article(f"a{self.next_id}", "text")
            self.next_id += 1
            assert not self.ledger.is_known(article.id)
            self.ledger.admit(article, priority, self.now)
            self.admitted[article.id] += 1

    @rule(article=st.integers(0, 50))
    def resubmit_is_refused_while_known(self, article: int) -> None:
        article_id = f"a{article}"
        known = self.admitted[article_id] > self.handed_back[article_id]
        assert self.ledger.is_known(article_id) == (known and article_id not in self.aside)

    @rule(extractor=st.integers(1, 4))
    def take(self, extractor: int) -> None:
        if extractor in self.dead:
            return
        self.now += 1.0
        batch = self.ledger.take(extractor, self.now)
        if batch is None:
            assert not self.ledger.has_work()
            return
        if batch.batch_id < 0:  # a suspect goes out alone
            assert len(batch) == 1
        mine = self.held.setdefault(extractor, set())
        for item in batch.items:
            assert all(item.article.id not in ids for ids in self.held.values())
            mine.add(item.article.id)

    @rule(extractor=st.integers(1, 4), data=st.data())
    def finish(self, extractor: int, data: st.DataObject) -> None:
        mine = sorted(self.held.get(extractor, set()))
        ids = data.draw(st.lists(st.sampled_from(mine), unique=True)) if mine else []
        # Late or foreign results are mixed in: they must be refused.
        strays = data.draw(st.lists(st.sampled_from([f"a{i}" for i in range(60)]), max_size=3))
        results: list[TerminalResult] = [
            data.draw(st.sampled_from([done(i), failed(i)])) for i in ids + strays
        ]
        outcome = self.ledger.finish(extractor, results)
        accepted = {r.article_id for r in outcome.accepted}
        assert set(ids) <= accepted
        assert accepted <= set(mine)
        for article_id in accepted:
            self.terminal[article_id] += 1
            self.held[extractor].discard(article_id)

    @rule(extractor=st.integers(1, 4), data=st.data())
    def give_back(self, extractor: int, data: st.DataObject) -> None:
        mine = sorted(self.held.get(extractor, set()))
        ids = data.draw(st.lists(st.sampled_from(mine), unique=True)) if mine else []
        taken = self.ledger.give_back(extractor, [*ids, "nobody"])
        assert taken == len(ids)
        for article_id in ids:
            self.held[extractor].discard(article_id)
        if self.ledger.shutting_down:
            self.aside.update(ids)

    @rule(extractor=st.integers(1, 4), data=st.data())
    def crash(self, extractor: int, data: st.DataObject) -> None:
        if extractor in self.dead:
            return
        mine = sorted(self.held.pop(extractor, set()))
        blamed = frozenset(data.draw(st.lists(st.sampled_from(mine), unique=True)) if mine else [])
        outcome = self.ledger.crash(extractor, blamed, "boom")
        assert outcome.suspects + outcome.bystanders + len(outcome.poisoned) == len(mine)
        assert {p.article_id for p in outcome.poisoned} <= blamed
        for poison in outcome.poisoned:
            assert poison.reason is FailureReason.POISON
            self.terminal[poison.article_id] += 1
        if self.ledger.shutting_down:
            self.aside.update(set(mine) - {p.article_id for p in outcome.poisoned})
        # Extractor ids are never reused: a restarted one gets a new id.
        self.dead.add(extractor)

    @precondition(lambda self: not self.ledger.shutting_down)
    @rule()
    def begin_shutdown(self) -> None:
        self.ledger.begin_shutdown()

    @precondition(lambda self: self.ledger.shutting_down)
    @rule()
    def take_returned(self) -> None:
        for article in self.ledger.take_returned():
            self.handed_back[article.id] += 1
            self.aside.discard(article.id)
            assert all(article.id not in ids for ids in self.held.values())
        assert not self.aside and self.ledger.set_aside == 0

    # -- the invariant ------------------------------------------------------

    @invariant()
    def nothing_lost_nothing_twice(self) -> None:
        held = Counter(a for ids in self.held.values() for a in ids)
        assert self.ledger.held == sum(held.values())
        for extractor, ids in self.held.items():
            assert self.ledger.held_by(extractor) == ids
        assert all(count == 1 for count in self.terminal.values()), "recorded twice"
        # Each admission is terminal, handed back, or still in the ledger.
        elsewhere = self.terminal + self.handed_back
        assert all(elsewhere[a] <= n for a, n in self.admitted.items())
        in_ledger = sum(self.admitted.values()) - sum(elsewhere.values())
        assert self.ledger.outstanding + self.ledger.set_aside == in_ledger
        assert self.ledger.set_aside == len(self.aside)

    def teardown(self) -> None:
        rest = self.ledger.take_unfinished()
        for article in rest:
            self.handed_back[article.id] += 1
        # Every admission ended exactly one way.
        assert self.terminal + self.handed_back == self.admitted
        assert self.ledger.outstanding == 0


TestLedger = LedgerMachine.TestCase
TestLedger.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_results_are_tallied_by_tier_model_and_reason():
    ledger = make_ledger()
    for i in range(3):
        ledger.admit(Article(f"a{i}", "x"), 0.0, 0.0)
    batch = ledger.take(1, 1.0)
    assert batch is not None and len(batch) == 3
    finish = ledger.finish(1, [done("a0"), done("a1", model="flash"), failed("a2")])
    assert ledger.tallies.submitted == 3
    tally = ResultTally()
    tally.record(finish.accepted)
    t = tally.snapshot()
    assert t.done_by_tier == {"cold": 2} and t.done_by_model == {"lite": 1, "flash": 1}
    assert dict(t.failed_by_reason) == {"timeout": 1} and t.fallbacks == 1
    assert (t.done_total, t.failed_total, t.terminal) == (2, 1, 3)


def test_a_crashing_article_goes_out_alone_then_ends_as_poison():
    ledger = make_ledger(poison_after=2)
    for i in range(3):
        ledger.admit(Article(f"a{i}", "x"), 0.0, 0.0)
    ledger.take(1, 1.0)
    crash = ledger.crash(1, frozenset({"a1"}), "boom")
    assert (crash.suspects, crash.bystanders, crash.poisoned) == (1, 2, ())
    assert ledger.tallies.requeued_after_crash == 3
    probe = ledger.take(2, 2.0)
    assert probe is not None and probe.batch_id < 0
    assert [i.article.id for i in probe.items] == ["a1"]
    crash = ledger.crash(2, frozenset({"a1"}), "boom again")
    (poison,) = crash.poisoned
    assert poison.article_id == "a1" and poison.attempts == 2 and poison.tier == "cold"
    assert poison.detail == "held by 2 crashed extractors; last error: boom again"
    assert ledger.is_known("a1")  # finished: a re-submission is refused
    rest = ledger.take(3, 3.0)
    assert rest is not None and sorted(i.article.id for i in rest.items) == ["a0", "a2"]


def test_the_memory_of_finished_ids_is_bounded():
    ledger = make_ledger(recent_limit=2)
    for i in range(3):
        ledger.admit(Article(f"a{i}", "x"), 0.0, 0.0)
    ledger.take(1, 1.0)
    ledger.finish(1, [done("a0"), done("a1"), done("a2")])
    assert [ledger.is_known(f"a{i}") for i in range(3)] == [False, True, True]


def test_after_shutdown_given_back_articles_are_set_aside_not_queued():
    ledger = make_ledger()
    for i in range(2):
        ledger.admit(Article(f"a{i}", "x"), 0.0, 0.0)
    ledger.take(1, 1.0)
    ledger.begin_shutdown()
    assert ledger.give_back(1, ["a0"]) == 1
    assert not ledger.has_work() and ledger.outstanding == 1  # a1 is still held
    assert [a.id for a in ledger.take_returned()] == ["a0"]
    assert not ledger.is_known("a0")  # handed back: the caller may queue it again


def test_ledger_refuses_nonsense():
    with pytest.raises(ValueError, match="poison_after"):
        make_ledger(poison_after=0)
