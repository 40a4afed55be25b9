"""The daily budget through the command line: ``run`` stops once the budget
holds the work left (exit 9, the rest queued), says so in the summary and
in ``status``; a second run the same day spends nothing more (the spend is
in the quota snapshot)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cli_helpers import query, sample_lines, states, write_config, write_jsonl

from tierbatch.adapters.app.cli import EXIT_BUDGET, EXIT_OK, main

BUDGET = 0.002  # about a dozen requests of m-pro in the simulation


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_run_stops_at_the_daily_budget_and_a_rerun_spends_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    config = write_config(tmp_path / "c.toml")
    with config.open("a", encoding="utf-8") as f:
        f.write(f"\n[budget]\nusd_per_day = {BUDGET}\noutput_ratio = 2.0\n")
    articles = write_jsonl(tmp_path / "a.jsonl", sample_lines(120))
    db = tmp_path / "t.sqlite"
    args = ("--db", str(db), "--config", str(config), "--no-progress")

    code, out, err = run_cli("run", str(articles), *args)
    assert code == EXIT_BUDGET, out + err
    assert "daily budget is spent" in err
    assert "budget: $" in out and "stopped: hot, cold" in out
    left = states(db)
    assert left.get("failed", 0) == 0
    assert 0 < left["done"] < 120 and left["queued"] == 120 - left["done"]
    spent = query(db, "SELECT SUM(cost_usd) FROM results")[0][0]
    assert spent >= BUDGET

    code, out, _ = run_cli("status", "--db", str(db), "--config", str(config), "--json")
    assert code == EXIT_OK
    budget = json.loads(out)["budget"]
    assert budget["usd_per_day"] == BUDGET and budget["spent_usd"] >= BUDGET
    assert [t["may_spend"] for t in budget["tiers"]] == [False, False]
    code, text, _ = run_cli("status", "--db", str(db), "--config", str(config))
    assert "budget: $" in text and "stopped: hot, cold" in text

    # The same day again: the snapshot's spend holds, nothing more is called.
    code, out, err = run_cli("run", str(articles), *args)
    assert code == EXIT_BUDGET, out + err
    assert states(db) == left
