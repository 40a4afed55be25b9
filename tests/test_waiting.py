"""The registry's waiting list, without threads: order, holds, patience,
allowances, deadlines, and the invariants after every ``serve``."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tierbatch.policies.planner import Allowances, ModelCapacity, TierDemand, plan_dispatch
from tierbatch.policies.quota import Grant
from tierbatch.policies.waiting import Expired, Granted, Unroutable, Waiter, WaitingList


class FakeQuota:
    """Per model: ``slots`` requests and ``tokens`` input tokens left now;
    refills only when told. ``retired`` models never serve."""

    def __init__(self, slots: dict[str, int], tokens: dict[str, int] | None = None) -> None:
        self.slots = dict(slots)
        self.tokens = dict(tokens or {})
        self.retired: set[str] = set()
        self.frees_at: dict[str, float] = {}
        self.granted: list[tuple[str, int]] = []
        self._ids = 0

    def earliest(self, model, est_tokens, now):
        if model not in self.slots or model in self.retired:
            return math.inf
        fits = self.slots[model] > 0 and self.tokens.get(model, math.inf) >= est_tokens
        return now if fits else self.frees_at.get(model, now + 60.0)

    def grant(self, model, est_tokens, now):
        assert self.earliest(model, est_tokens, now) <= now
        self.slots[model] -= 1
        if model in self.tokens:
            self.tokens[model] -= est_tokens
        self._ids += 1
        self.granted.append((model, est_tokens))
        return Grant(self._ids, model, now, est_tokens)

    def never_reason(self, model, est_tokens):
        if model not in self.slots:
            return "not configured"
        if model in self.retired:
            return "retired"
        return None


CHAINS = {
    "hot": ("pro", "flash", "lite"),
    "warm": ("flash", "lite"),
    "cold": ("lite",),
}
RANK = {"hot": 0, "warm": 1, "cold": 2}


def waiter(n, tier, *, at=0.0, tokens=1, holder=1, patience=0.0, deadline=None, chain=None):
    return Waiter(
        request_id=n,
        holder=holder,
        tier=tier,
        tier_rank=RANK[tier],
        chain=chain or CHAINS[tier],
        est_tokens=tokens,
        enqueued_at=at,
        deadline=deadline,
        patience_s=patience,
    )


def granted(decisions):
    return [(d.waiter.request_id, d.grant.model) for d in decisions if isinstance(d, Granted)]


def test_highest_tier_first_then_oldest():
    wl = WaitingList()
    wl.push(waiter(1, "cold", at=0), 0)
    wl.push(waiter(2, "warm", at=5), 0)
    wl.push(waiter(3, "warm", at=1), 0)
    quota = FakeQuota({"pro": 0, "flash": 0, "lite": 2})
    assert granted(wl.serve(10, quota)) == [(3, "lite"), (2, "lite")]
    assert len(wl) == 1


def test_a_waiter_takes_the_first_model_of_its_chain_with_room():
    wl = WaitingList()
    wl.push(waiter(1, "hot"), 0)
    quota = FakeQuota({"pro": 1, "flash": 1, "lite": 1})
    assert granted(wl.serve(0, quota)) == [(1, "pro")]


def test_a_head_that_does_not_fit_holds_its_model_but_not_others():
    quota = FakeQuota({"flash": 5, "lite": 1}, tokens={"flash": 10, "lite": 100})
    wl = WaitingList()
    wl.push(waiter(1, "warm", tokens=50, chain=("flash",)), 0)  # flash's tokens are short
    wl.push(waiter(2, "warm", at=1, tokens=1, chain=("flash",)), 0)
    wl.push(waiter(3, "cold", tokens=1), 0)
    # 1 holds flash: 2 may not overtake it there; cold's lite goes ahead.
    assert granted(wl.serve(0, quota)) == [(3, "lite")]


def test_a_waiter_that_fits_nowhere_first_takes_a_later_model_of_its_chain():
    quota = FakeQuota({"flash": 5, "lite": 1}, tokens={"flash": 10, "lite": 100})
    wl = WaitingList()
    wl.push(waiter(1, "warm", tokens=50), 0)  # too big for flash now, fits lite
    wl.push(waiter(2, "warm", at=1, tokens=1, chain=("flash",)), 0)
    wl.push(waiter(3, "cold", tokens=1), 0)
    assert granted(wl.serve(0, quota)) == [(1, "lite"), (2, "flash")]


def test_patience_leaves_a_fallback_to_the_tier_whose_primary_it_is():
    wl = WaitingList()
    for n in range(10):
        wl.push(waiter(n, "hot", at=n, patience=30), 0)  # every hot pack, not only the head
    wl.push(waiter(100, "warm", at=0), 0)
    quota = FakeQuota({"pro": 0, "flash": 1, "lite": 0})
    quota.frees_at["pro"] = 10.0  # pro frees within the patience
    assert granted(wl.serve(1, quota)) == [(100, "flash")]
    quota.slots["flash"] = 5
    assert granted(wl.serve(2, quota)) == []  # pro frees in time: hot waits for it
    quota.slots["pro"] = 10
    assert [m for _, m in granted(wl.serve(10, quota))] == ["pro"] * 10


def test_past_its_patience_a_pack_takes_any_model_of_its_chain():
    wl = WaitingList()
    wl.push(waiter(1, "hot", patience=5), 0)
    wl.push(waiter(2, "warm", at=3), 0)
    quota = FakeQuota({"pro": 0, "flash": 1, "lite": 0})
    quota.frees_at["pro"] = 1000.0
    assert granted(wl.serve(1, quota)) == [(2, "flash")]  # warm's own primary first
    wl.push(waiter(3, "warm", at=4), 1)
    quota.slots["flash"] = 1
    assert granted(wl.serve(2, quota)) == [(3, "flash")]
    quota.slots["flash"] = 1
    assert granted(wl.serve(6, quota)) == [(1, "flash")]  # patience over: hot goes first
    assert wl.next_wake(6, quota) is None


def test_a_patient_pack_takes_an_unwanted_fallback_when_its_primary_is_far():
    wl = WaitingList()
    wl.push(waiter(1, "hot", patience=30), 0)
    quota = FakeQuota({"pro": 0, "flash": 1, "lite": 0})
    quota.frees_at["pro"] = 100.0  # beyond the patience
    assert granted(wl.serve(1, quota)) == [(1, "flash")]


def test_allowances_keep_overflow_off_the_model_a_lower_tier_needs():
    plan = plan_dispatch(
        [
            TierDemand("warm", 1, ("flash", "lite"), 4),
            TierDemand("cold", 2, ("lite",), 4),
        ],
        {
            "flash": ModelCapacity("flash", 2, 2 / 60, step_s=60),
            "lite": ModelCapacity("lite", 4, 4 / 60, step_s=60),
        },
    )
    allowances = Allowances(plan)
    wl = WaitingList()
    for n in range(4):
        wl.push(waiter(n, "warm", at=n), 0)
        wl.push(waiter(10 + n, "cold", at=n), 0)
    quota = FakeQuota({"flash": 2, "lite": 4})
    got = granted(wl.serve(0, quota, allowances))
    on_lite = [n for n, m in got if m == "lite"]
    assert sum(1 for n in on_lite if n < 10) <= 0 + plan.spare["lite"] + 1e-9
    assert sorted(n for n, m in got if m == "flash") == [0, 1]


def test_deadlines_expire_and_unroutable_chains_fail():
    wl = WaitingList()
    wl.push(waiter(1, "cold", deadline=5), 0)
    wl.push(waiter(2, "cold", chain=("gone",)), 0)
    quota = FakeQuota({"lite": 0})
    decisions = wl.serve(1, quota)
    assert [type(d) for d in decisions] == [Unroutable]
    assert wl.next_wake(1, quota) == 5
    decisions = wl.serve(5, quota)
    assert [type(d) for d in decisions] == [Expired]
    assert len(wl) == 0


def test_a_retired_model_fails_only_the_waiters_with_nothing_else():
    wl = WaitingList()
    wl.push(waiter(1, "cold"), 0)
    wl.push(waiter(2, "warm"), 0)
    quota = FakeQuota({"flash": 0, "lite": 0})
    quota.retired.add("lite")
    decisions = wl.unroutable(quota)
    assert [d.waiter.request_id for d in decisions] == [1]
    assert len(wl) == 1


def test_remove_holder_drops_only_its_waiters():
    wl = WaitingList()
    wl.push(waiter(1, "cold", holder=1), 0)
    wl.push(waiter(2, "cold", holder=2), 0)
    assert [w.request_id for w in wl.remove_holder(1)] == [1]
    quota = FakeQuota({"lite": 5})
    assert granted(wl.serve(0, quota)) == [(2, "lite")]


@st.composite
def scenarios(draw):
    steps = []
    for _ in range(draw(st.integers(1, 40))):
        tier = draw(st.sampled_from(sorted(CHAINS)))
        steps.append(
            (
                tier,
                draw(st.integers(1, 5)),  # tokens
                draw(st.sampled_from([0.0, 0.0, 5.0])),  # patience
                draw(st.dictionaries(st.sampled_from(["pro", "flash", "lite"]), st.integers(0, 2))),
            )
        )
    return steps


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_after_every_serve_no_eligible_head_fits(steps):
    """Work conservation and no overtaking: once ``serve`` returns, for every
    model the best waiter that may use it does not fit; every grant was in
    its chain; nobody is granted twice."""
    wl = WaitingList()
    quota = FakeQuota({"pro": 0, "flash": 0, "lite": 0}, tokens={"flash": 6})
    seen: set[int] = set()
    now = 0.0
    for n, (tier, tokens, patience, refill) in enumerate(steps):
        now += 1.0
        wl.push(waiter(n, tier, at=now, tokens=tokens, patience=patience), now)
        for model, extra in refill.items():
            quota.slots[model] += extra
            if model == "flash":
                quota.tokens["flash"] += 3 * extra
        for d in wl.serve(now, quota):
            assert isinstance(d, Granted)
            assert d.grant.model in d.waiter.chain
            assert d.waiter.request_id not in seen
            seen.add(d.waiter.request_id)
        for model in ("pro", "flash", "lite"):
            ordered = sorted(
                (w for w in wl.waiters if model in w.chain),
                key=lambda w: (w.tier_rank, w.enqueued_at, w.request_id),
            )
            for w in ordered:
                # (pushed at enqueued_at: its patience runs from then)
                patient = w.enqueued_at + w.patience_s > now and model != w.chain[0]
                if patient:
                    continue  # may rightly hold out for its primary
                assert quota.earliest(model, w.est_tokens, now) > now, (model, w)
                break  # the first non-patient waiter holds the model
