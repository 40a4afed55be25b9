"""What the live display, the progress log and the metrics say of batch jobs
and of tiers the daily budget moved to the Batch API."""

from __future__ import annotations

import io
from dataclasses import replace

import structlog
from rich.console import Console
from test_metrics import scrape, stats, value

from tierbatch.adapters.app.budget_view import budget_line
from tierbatch.adapters.app.metrics import Metrics
from tierbatch.adapters.app.progress import LogProgress, ProgressView, render_view
from tierbatch.adapters.storage.store import BatchReport
from tierbatch.policies.budget import BudgetState, TierBudget
from tierbatch.policies.budget_config import OnExhausted
from tierbatch.policies.config import ModelSpec

NOW = 1000.0
BUDGET = BudgetState(
    usd_per_day=5.0,
    day=1,
    spent_usd=4.0,
    committed_usd=4.5,
    resets_at=NOW + 7200.0,
    on_exhausted=OnExhausted.BATCH,
    tiers=(
        TierBudget("hot", 3.0, 3.2, None, 0.0, True),
        TierBudget("cold", 1.0, 1.3, None, 0.0, False, batch_usd=0.8, backlog_usd=2.0, moved=True),
    ),
)
JOBS = BatchReport(in_flight=2, articles_in_flight=40, settled=3, returned=1, cost_usd=0.5)


def view(**kwargs: object) -> ProgressView:
    base = ProgressView(
        elapsed_s=3.0,
        now=NOW,
        stats=replace(stats(NOW), budget=BUDGET),
        finished=1,
        rate_per_s=0.3,
        db_counts=None,
        models={"m-pro": ModelSpec("m-pro", 60, 0, 0)},
        wall_now=NOW,
    )
    return replace(base, **kwargs)  # type: ignore[arg-type]


def test_the_budget_line_says_which_tiers_moved_to_batch() -> None:
    line = budget_line(BUDGET, NOW, batch_api=True)
    assert "moved to batch: cold" in line and "batch jobs $0.8000 of it" in line
    assert "stopped" not in line  # cold is stopped, but it is moved: that is what it does
    assert "resets in 2.0 h" in line
    # a daemon without the Batch API: the tier waits, and the line says why
    alone = budget_line(BUDGET, NOW, batch_api=False)
    assert "moved to batch" not in alone
    assert "stopped: cold (on_exhausted = batch, but this provider has no Batch API" in alone
    # status (no process to ask): the budget's own verdict
    assert "moved to batch: cold" in budget_line(BUDGET, NOW)


def test_the_live_display_shows_jobs_in_flight_and_what_waits_for_the_budget() -> None:
    text = io.StringIO()
    shown = view(batch=JOBS, batch_api=True, batch_held=(("cold", 7),))
    Console(file=text, width=240).print(render_view(shown, "t"))
    out = text.getvalue()
    assert "moved to batch: cold" in out
    assert "batch jobs: 2 in flight (40 articles), 3 settled, 1 returned" in out
    assert "waiting for the daily budget: cold 7 article(s)" in out


def test_the_progress_log_line_carries_the_batch_jobs_and_the_moved_tiers() -> None:
    reporter = LogProgress(interval_s=3600)
    reporter.update(view(batch=JOBS, batch_api=True, batch_held=(("cold", 7),)))
    with structlog.testing.capture_logs() as logs:
        reporter.stop()
    (line,) = [entry for entry in logs if entry["event"] == "progress"]
    assert line["budget_moved_to_batch"] == ["cold"]
    assert line["budget_batch_usd"] == 0.8
    assert line["batch_jobs_in_flight"] == 2 and line["batch_articles_in_flight"] == 40
    assert line["batch_held"] == {"cold": 7}


def test_the_metrics_export_batch_jobs_and_moved_tiers() -> None:
    metrics = Metrics()
    metrics.update(
        replace(stats(NOW), budget=BUDGET),
        NOW,
        wall_offset=0.0,
        batch=JOBS,
        batch_held={"hot": 0, "cold": 7},
    )
    server = metrics.serve(0)
    try:
        samples = scrape(server.url)
    finally:
        server.close()
    assert value(samples, "tierbatch_budget_moved_to_batch", tier="cold") == 1
    assert value(samples, "tierbatch_budget_moved_to_batch", tier="hot") == 0
    assert value(samples, "tierbatch_budget_batch_usd", tier="cold") == 0.8
    assert value(samples, "tierbatch_batch_jobs_in_flight") == 2
    assert value(samples, "tierbatch_batch_articles_in_flight") == 40
    assert value(samples, "tierbatch_batch_articles_held", tier="cold") == 7
