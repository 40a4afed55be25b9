"""DB.tiers.json: the thresholds a daemon uses, written atomically, read by
``status`` (which says so when there is none or it is unreadable)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from tierbatch.adapters.app.daemon import default_snapshot_path
from tierbatch.adapters.app.status_report import read_tier_rules, render_tier_rules
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.adapters.storage.tiers_file import (
    TiersFileError,
    default_tiers_path,
    read_tiers,
    tiers_path_beside,
    write_tiers,
)
from tierbatch.policies.tier_assignment import TierCount, TierSplit


def split(hot: float, warm: float, window: int = 500) -> TierSplit:
    return TierSplit(
        tiers=(
            TierCount("hot", 0, 0.0, 0.1, hot),
            TierCount("warm", 0, 0.0, None, warm),
            TierCount("cold", 0, 0.0, None, 0.0),
        ),
        total=0,
        window=window,
        uses_shares=True,
    )


def shares_config():
    config = load_config(None)
    hot, warm, cold = config.tiers
    return replace(config, tiers=(replace(hot, share=0.1, min_priority=0.0), warm, cold))


def text_of(rules) -> str:
    out = io.StringIO()
    render_tier_rules(rules, Console(file=out, width=160, no_color=True))
    return out.getvalue()


def test_written_thresholds_read_back_and_replace_the_old_file(tmp_path: Path) -> None:
    path = default_tiers_path(tmp_path / "q.sqlite")
    assert path.name == "q.sqlite.tiers.json"
    write_tiers(path, split(0.5, 0.4), as_of=None, saved_at=100.0)
    write_tiers(path, split(0.45, 0.4, window=900), as_of=1.5e9, saved_at=200.0)
    saved = read_tiers(path)
    assert saved is not None
    assert [(t.tier, t.share, t.min_priority) for t in saved.tiers] == [
        ("hot", 0.1, 0.45),
        ("warm", None, 0.4),
        ("cold", None, 0.0),
    ]
    assert (saved.window, saved.as_of, saved.saved_at) == (900, 1.5e9, 200.0)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_a_postgres_url_keeps_its_file_in_the_current_folder() -> None:
    path = default_tiers_path("postgresql://u@db.internal:5433/news")
    assert path == Path("postgresql-db.internal-5433-news.tiers.json")


def test_the_file_goes_where_the_quota_snapshot_goes(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    assert tiers_path_beside(default_snapshot_path(db)) == default_tiers_path(db)
    assert tiers_path_beside(tmp_path / "state.bin") == tmp_path / "state.bin.tiers.json"


def test_status_shows_a_share_tiers_saved_threshold_and_the_fixed_ones(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    write_tiers(path, split(0.512, 0.4, window=700), as_of=None, saved_at=0.0)
    rules = read_tier_rules(path, shares_config(), now=path.stat().st_mtime + 5)
    assert rules.window == 700 and rules.saved_age_s == pytest.approx(5.0)
    text = text_of(rules)
    assert "thresholds the shares imply over 700 recent priorities, saved 5 s ago" in text
    assert "hot: share 10%, min_priority >= 0.512" in text
    assert "warm: min_priority >= 0.4" in text and "cold: the rest" in text


def test_status_says_when_no_run_saved_the_thresholds_yet(tmp_path: Path) -> None:
    rules = read_tier_rules(tmp_path / "none.json", shares_config(), now=0.0)
    assert rules.tiers[0].min_priority is None
    text = text_of(rules)
    assert "no run has saved the thresholds its shares imply yet" in text
    assert "hot: share 10%, min_priority >= ?" in text


def test_a_malformed_file_is_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"format": 1, "tiers": "nope"}')
    with pytest.raises(TiersFileError):
        read_tiers(path)
    rules = read_tier_rules(path, shares_config(), now=0.0)
    assert rules.problem is not None and "cannot read" in rules.problem
    assert "cannot read" in text_of(rules)
