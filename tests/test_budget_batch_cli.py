"""``[budget] on_exhausted = "batch"`` through the command line, against the
local Gemini-compatible server: once the day's budget cannot pay for the
backlog interactively, the tier's work goes to the Batch API at half price
instead of waiting for midnight -- each article by exactly one way -- and
the batch jobs' cost counts against the same day's budget."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cli_helpers import TEST_KEY, query, sample_ids, sample_lines, states, write_config, write_jsonl

from tierbatch.adapters.app.cli import EXIT_OK, main
from tierbatch.adapters.simulation.batch_emulator import BatchSettings
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig

N = 60
# The sample's 60 articles cost about $0.05 on m-pro interactively (two an
# request), half that in batch: this budget pays for them only in batch.
BUDGET = 0.04


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def budget_config(path: Path, base_url: str, on_exhausted: str) -> Path:
    write_config(path, base_url=base_url)
    with path.open("a", encoding="utf-8") as f:
        f.write(
            f"\n[budget]\nusd_per_day = {BUDGET}\noutput_ratio = 0.5\n"
            f'on_exhausted = "{on_exhausted}"\n'
            "\n[batch]\npoll_interval_s = 0.1\ncollect_s = 0.2\n"
        )
    return path


def test_on_exhausted_batch_moves_the_tier_to_the_batch_api_instead_of_waiting_for_midnight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    settings = BatchSettings(pending_s=0.1, turnaround_s=0.3)
    with FakeGeminiServer(FakeGeminiConfig(batch=settings)) as server:
        config = budget_config(tmp_path / "c.toml", server.base_url, "batch")
        articles = write_jsonl(tmp_path / "a.jsonl", sample_lines(N))
        db = tmp_path / "t.sqlite"
        code, out, err = run_cli(
            "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
        )
        log = server.log
    # Before: on_exhausted = "batch" waited for midnight (exit 9, articles queued).
    assert code == EXIT_OK, out + err
    assert states(db) == {"done": N}
    assert "moved to batch: hot" in out
    assert "batch jobs: 0 in flight" in out
    # Each article went one way only: interactive calls or one batch job.
    interactive = [i for r in log if r.method == "generateContent" for i in r.article_ids]
    batched = [
        i
        for (requests,) in query(db, "SELECT requests FROM batch_jobs WHERE phase = 'settled'")
        for ids in json.loads(requests).values()
        for i in ids
    ]
    assert batched and interactive
    assert len(set(batched)) == len(batched) and not set(batched) & set(interactive)
    assert set(batched) | set(interactive) == set(sample_ids(N))
    assert len(query(db, "SELECT article_id FROM results")) == N
    # The day's spend counts the batch jobs, at their price, within the budget.
    (batch_cost,) = query(db, "SELECT SUM(cost_usd) FROM batch_jobs")[0]
    code, text, _ = run_cli("status", "--db", str(db), "--config", str(config), "--json")
    assert code == EXIT_OK
    budget = json.loads(text)["budget"]
    hot = budget["tiers"][0]
    assert hot["tier"] == "hot" and hot["moved"] is True
    assert hot["batch_usd"] == pytest.approx(batch_cost)
    spent = query(db, "SELECT SUM(cost_usd) FROM results")[0][0]
    assert budget["spent_usd"] == pytest.approx(spent, rel=1e-6)
    assert budget["spent_usd"] <= BUDGET
    code, text, _ = run_cli("status", "--db", str(db), "--config", str(config))
    assert "moved to batch: hot" in text and "batch jobs $" in text


def test_on_exhausted_stop_still_waits_for_midnight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    with FakeGeminiServer(FakeGeminiConfig()) as server:
        config = budget_config(tmp_path / "c.toml", server.base_url, "stop")
        articles = write_jsonl(tmp_path / "a.jsonl", sample_lines(N))
        db = tmp_path / "t.sqlite"
        code, out, err = run_cli(
            "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
        )
        log = server.log
    assert code == 9, out + err
    assert not any(r.method == "batches.create" for r in log)
    assert "moved to batch" not in out and "stopped: hot, cold (waiting for midnight" in out
    assert 0 < states(db)["done"] < N


def test_batch_jobs_spend_the_daily_budget_and_wait_when_it_cannot_pay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tier on the Batch API by its mode spends the day's budget too: its
    jobs' estimates are committed before they are created, so once the day
    cannot pay for the next job the rest waits (exit 9), and what the jobs
    cost is the day's spend."""
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    settings = BatchSettings(pending_s=0.1, turnaround_s=0.3)
    with FakeGeminiServer(FakeGeminiConfig(batch=settings)) as server:
        config = budget_config(tmp_path / "c.toml", server.base_url, "stop")
        text = config.read_text(encoding="utf-8")
        text = text.replace('name = "hot"\n', 'name = "hot"\nmode = "batch"\n', 1)
        text = text.replace(f"usd_per_day = {BUDGET}", "usd_per_day = 0.01")
        config.write_text(text, encoding="utf-8")
        articles = write_jsonl(tmp_path / "a.jsonl", sample_lines(N))
        db = tmp_path / "t.sqlite"
        code, out, err = run_cli(
            "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
        )
        log = server.log
    # Before: the budget ignored batch jobs, and every article went out.
    assert code == 9, out + err
    assert not any(r.method == "generateContent" for r in log)
    left = states(db)
    assert 0 < left["done"] < N and left["queued"] == N - left["done"]
    (cost, jobs) = query(db, "SELECT SUM(cost_usd), COUNT(*) FROM batch_jobs")[0]
    assert jobs >= 1 and cost > 0
    code, text, _ = run_cli("status", "--db", str(db), "--config", str(config), "--json")
    budget = json.loads(text)["budget"]
    assert budget["spent_usd"] == pytest.approx(cost)
    assert budget["tiers"][0]["batch_usd"] == pytest.approx(cost)
