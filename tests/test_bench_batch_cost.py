"""The bench's cost row runs and shows what it is for: with the cold tier
on ``auto``, its articles go to the Batch API and the USD per 1,000
articles drops, against the same deadline and quotas."""

from __future__ import annotations

import pytest

from bench.batch_cost import main


def test_batch_cost_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    interactive, auto = main(["--no-save", "--turnaround-s", "1"])
    assert interactive["articles"] == auto["articles"] == 405
    assert interactive["articles_by_batch"] == 0
    assert auto["articles_by_batch"] == auto["by_tier"]["cold"]["articles"] > 0
    assert auto["by_tier"]["cold"]["cost_usd"] == pytest.approx(
        interactive["by_tier"]["cold"]["cost_usd"] / 2, rel=0.05
    )
    assert auto["usd_per_1000_articles"] < interactive["usd_per_1000_articles"]
