"""The batch dispatcher and the daily budget, against the local fake server:
a job goes out only for the requests the budget commits, the rest wait in
line (the tier *held*) and go out once the budget pays for them; a settled
job tells the budget its real cost, a returned one 0 -- once each."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from cli_helpers import wait_until
from test_batch_dispatch import TURNAROUND_S, Setup, config, creates, serve
from test_fake_gemini_batch import ManualClock

from tierbatch.adapters.app.batch_dispatcher import BatchDispatcher
from tierbatch.adapters.simulation.batch_emulator import BatchFaultRates
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
    setup = with_budget(Setup(tmp_path, server, config(), 3), budget, poll_interval_s=0.05)
    setup.start()
    try:
        wait_until(lambda: len(budget.commits) >= 2, 20, "the budget asked twice")
        stats = setup.dispatcher.stats()
        assert stats.held == (("cold", 3),) and stats.held_waiting == 3
        assert setup.dispatcher.busy and not setup.dispatcher.busy_unheld
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
