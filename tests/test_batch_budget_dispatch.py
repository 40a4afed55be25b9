"""The batch dispatcher and the daily budget, against the local fake server:
a job goes out only for the requests the budget commits, the rest wait in
line (the tier *held*) and go out once the budget pays for them; a settled
job tells the budget its real cost, a returned one 0 -- once each."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from cli_helpers import wait_until
from test_batch_dispatch import TURNAROUND_S, Setup, config, creates, serve
from test_fake_gemini_batch import ManualClock

from tierbatch.adapters.app.batch_budget import JobBudget
from tierbatch.adapters.app.batch_dispatcher import BatchDispatcher
from tierbatch.adapters.simulation.batch_emulator import BatchFaultRates
from tierbatch.policies.articles import Article
from tierbatch.policies.batch_jobs import JobRequest
from tierbatch.policies.errors import RuntimeNotRunningError


class ScriptedBudget:
    """Commits what its script says, one answer per ask (then everything);
    records every commit and settle."""

    def __init__(self, answers: Sequence[int | Exception]) -> None:
        self._answers = list(answers)
        self._lock = threading.Lock()
        self.commits: list[tuple[str, str, int]] = []  # job id, tier, requests asked
        self.settles: list[tuple[str, str, float]] = []

    def commit_batch(
        self, job_id: str, tier: str, model: str, request_tokens: Sequence[int]
    ) -> int:
        with self._lock:
            self.commits.append((job_id, tier, len(request_tokens)))
            answer = self._answers.pop(0) if self._answers else len(request_tokens)
        if isinstance(answer, Exception):
            raise answer
        assert all(t > 0 for t in request_tokens)
        return answer

    def settle_batch(self, job_id: str, tier: str, usd: float, submitted_at: float) -> None:
        assert submitted_at > 0
        with self._lock:
            self.settles.append((job_id, tier, usd))


def with_budget(setup: Setup, budget: ScriptedBudget, **batch: float) -> Setup:
    cfg = config(**batch)
    setup.dispatcher = BatchDispatcher(
        cfg, setup.jobs, setup.client, lease_s=60.0, tick_s=0.01, budget=budget
    )
    return setup


def test_a_job_goes_out_for_the_committed_requests_and_the_rest_waits_for_the_budget(
    tmp_path: Path, clock: ManualClock
) -> None:
    server = serve(clock)
    # Six articles, two a request: three requests. The budget pays for two,
    # then nothing, then (asked again after poll_interval_s) for the last one.
    budget = ScriptedBudget([2, 0])
    setup = with_budget(Setup(tmp_path, server, config(), 6), budget).start()
    try:
        setup.wait_phase("submitted")
        (job,) = setup.jobs.jobs()
        assert job["articles"] == 4
        wait_until(lambda: len(budget.commits) >= 3, 20, "the budget asked again")
        wait_until(lambda: len(setup.jobs.jobs()) == 2, 20, "the held articles' job")
        setup.wait_phase("submitted")
        assert setup.dispatcher.stats().held == ()
        assert sorted(j["articles"] for j in setup.jobs.jobs()) == [2, 4]
        assert creates(server) == 2
        # a refused ask committed nothing, and says so (a release of nothing)
        refused = budget.commits[1][0]
        assert (refused, "cold", 0.0) in budget.settles
        clock.advance(TURNAROUND_S)
        setup.wait_phase("settled")
        costs = {j["id"]: j["cost_usd"] for j in setup.jobs.jobs()}
        settled = {job_id: usd for job_id, _, usd in budget.settles if job_id in costs}
        assert settled == pytest.approx(costs)  # the real cost, once per job
        assert all(usd > 0 for usd in settled.values())
        assert len(setup.results()) == 6
    finally:
        setup.close()
        server.stop()


def test_a_tier_the_budget_holds_keeps_its_articles_and_says_so(
    tmp_path: Path, clock: ManualClock
) -> None:
    server = serve(clock)
    budget = ScriptedBudget([0] * 1000)
    setup = with_budget(Setup(tmp_path, server, config(), 3), budget, poll_interval_s=0.2)
    setup.start()
    try:
        dispatcher = setup.dispatcher

        def held_again() -> bool:
            # asked twice, and back in line after the second refusal
            return (
                len(budget.commits) >= 2
                and dispatcher.stats().held == (("cold", 3),)
                and not dispatcher.busy_unheld
            )

        wait_until(held_again, 20, "the budget asked twice and the tier held")
        assert dispatcher.stats().held_waiting == 3 and dispatcher.busy
        assert creates(server) == 0 and setup.jobs.jobs() == []
        assert setup.store.counts()["leased"] == 3  # still the daemon's: its stop releases them
    finally:
        setup.close()
        server.stop()


def test_a_budget_that_cannot_be_asked_holds_the_job_and_a_returned_job_costs_nothing(
    tmp_path: Path, clock: ManualClock
) -> None:
    server = serve(clock, BatchFaultRates(expiry=1.0))
    budget = ScriptedBudget([RuntimeNotRunningError("the runtime is not running")])
    setup = with_budget(Setup(tmp_path, server, config(), 2), budget).start()
    try:
        setup.wait_phase("submitted")
        assert len(budget.commits) == 2  # the failed ask, then the one that committed
        job_id = setup.jobs.jobs()[0]["id"]
        clock.advance(TURNAROUND_S)
        setup.wait_phase("returned")
        assert [s for s in budget.settles if s[0] == job_id] == [(job_id, "cold", 0.0)]
    finally:
        setup.close()
        server.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_a_held_tier_is_asked_again_on_request_and_its_refusal_is_told_apart() -> None:
    """What ``run`` waits for before it ends on a budget that holds the
    batch work: a refusal *after* it asked again (money may have been freed
    by what settled last)."""
    budget = ScriptedBudget([0, 0, 1])
    jobs = JobBudget(budget, retry_s=3600.0)
    article = {"a": Article(id="a", text="some text")}
    requests = [JobRequest("r0", ("a",))]
    assert asyncio.run(jobs.commit("j1", "cold", "m", requests, article)) == 0
    assert jobs.held() == {"cold"}
    assert jobs.waits("cold", time.monotonic())  # not before retry_s
    asked = jobs.retry_held()
    assert not jobs.waits("cold", time.monotonic())  # at once, now
    assert not jobs.refused_since(asked)  # the refusal before does not count
    assert asyncio.run(jobs.commit("j2", "cold", "m", requests, article)) == 0
    assert jobs.refused_since(asked)
    assert asyncio.run(jobs.commit("j3", "cold", "m", requests, article)) == 1
    assert jobs.held() == frozenset()
