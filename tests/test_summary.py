"""The run summary's grounding table: per tier, model and pack size, the
share of cross-article and ungrounded entities."""

from __future__ import annotations

import io

from runtime_helpers import small_config

from tierbatch.adapters.app.summary import ResultTally, build_summary, render_summary
from tierbatch.policies.grounding import GroundingCounts
from tierbatch.policies.results import Done


def test_the_summary_shows_what_each_pack_size_cost_in_quality():
    tally = ResultTally()
    mixed = GroundingCounts(grounded=6, cross_article=3, ungrounded=1)
    tally.add(
        [
            Done("a", (), "flash", "warm", 1, 10, 1, 0.1, grounding=mixed, pack_size=6),
            Done("b", (), "flash", "warm", 1, 10, 1, 0.1, grounding=mixed, pack_size=6),
            Done(
                "c", (), "flash", "warm", 1, 10, 1, 0.1, grounding=GroundingCounts(4), pack_size=1
            ),
            Done("d", (), "flash", "warm", 1, 10, 1, 0.1),  # of an older version: no counts
        ]
    )
    snapshot = tally.snapshot()
    summary = build_summary(
        small_config(), provider="p", synthetic=True, elapsed_s=1.0, tally=snapshot, usage=()
    )
    assert [(r.pack_size, r.articles, r.counts.total) for r in summary.grounding] == [
        (1, 1, 4),
        (6, 2, 20),
    ]
    out = io.StringIO()
    render_summary(summary, out)
    text = out.getvalue()
    assert "grounding per tier, model and pack size" in text
    line = next(
        line for line in text.splitlines() if line.lstrip().startswith("warm") and "30.0%" in line
    )
    assert "10.0%" in line  # ungrounded share at pack size 6
