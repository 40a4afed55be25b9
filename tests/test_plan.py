"""``tierbatch plan`` and the sizing behind it: the tier split the composer
would make, requests from pack sizes, the plan and its bound on fresh or
restored quotas, warnings, JSON; and the bound a ``run`` ends with."""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import query, write_jsonl

from tierbatch.adapters.app.cli import EXIT_OK, EXIT_USAGE, main
from tierbatch.adapters.app.plan_report import format_duration, plan_for
from tierbatch.adapters.app.sample import load_demo_config, sample_articles
from tierbatch.adapters.storage.config_file import parse_config_text
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.policies.articles import Article
from tierbatch.policies.config import Config
from tierbatch.policies.outcomes import RateLimited, RateLimitScope, Succeeded, Usage
from tierbatch.policies.planner import ModelCapacity, TierShape
from tierbatch.policies.quota import QuotaPolicy
from tierbatch.policies.sizing import TierLoad, size_backlog, tier_loads, windows_spanned

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)

CONFIG = """
global_fallback = "lite"

[models.pro]
rpm = 10
tpm = 0
rpd = 0

[models.lite]
rpm = 20
tpm = 0
rpd = 0

[[tiers]]
name = "hot"
min_priority = 0.5
model = "pro"
fallback_model = "lite"
max_articles_per_request = 2

[[tiers]]
name = "cold"
min_priority = 0.0
model = "lite"
max_articles_per_request = 5

[composer]
mix = { hot = 2, cold = 5 }

[priority]
hotness_weight = 0.0
goodness_weight = 1.0

[priority.domains]
"good.example" = 0.9
"bad.example" = 0.1

[quota]
limiter = "window"

[provider]
kind = "simulated"
"""


def config(text: str = CONFIG) -> Config:
    return parse_config_text(text)


def line(article_id: str, domain: str, **extra: Any) -> str:
    return json.dumps(
        {
            "id": article_id,
            "text": "Some news. " * 20,
            "url": f"https://{domain}/{article_id}",
            **extra,
        }
    )


def backlog(hot: int, cold: int) -> list[str]:
    return [line(f"h{i}", "good.example") for i in range(hot)] + [
        line(f"c{i}", "bad.example") for i in range(cold)
    ]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# ---- the pure part ---------------------------------------------------------------


def test_windows_spanned() -> None:
    assert windows_spanned(0.0, 60.0) == 1
    assert windows_spanned(59.9, 60.0) == 1
    assert windows_spanned(60.0, 60.0) == 2
    assert windows_spanned(125.0, 60.0) == 3
    assert windows_spanned(math.inf, 60.0) == 1


def test_tier_loads_score_with_cluster_hotness_over_the_whole_input() -> None:
    """Hotness comes from every article of a cluster, as the daemon warms its
    cluster statistics from the whole backlog before leasing: the first
    article of a big story is as hot as its last."""
    cfg = config(
        CONFIG.replace("hotness_weight = 0.0", "hotness_weight = 1.0").replace(
            "goodness_weight = 1.0", "goodness_weight = 0.0"
        )
    )
    wall = NOW.timestamp()
    story = [
        Article(f"s{i}", "text", cluster_id="big", published_at=NOW - timedelta(minutes=i))
        for i in range(30)
    ]
    lone = [Article(f"l{i}", "text", cluster_id=f"lone{i}", published_at=NOW) for i in range(7)]
    loads = tier_loads([*story, *lone], cfg, wall)
    assert [(t.tier, t.rank, t.articles) for t in loads] == [("hot", 0, 30), ("cold", 1, 7)]
    # Tokens as the composer estimates them: the articles alone, no prompt.
    assert 0 < loads[0].tokens_per_article < 100


def test_size_backlog_packs_requests_and_plans_them() -> None:
    loads = (TierLoad("hot", 0, 60, 50.0), TierLoad("cold", 1, 50, 50.0))
    shapes = (
        TierShape("hot", 0, ("pro", "lite"), 2, overhead_tokens=300),
        TierShape("cold", 1, ("lite",), 5, overhead_tokens=300),
    )
    windowed = {
        "pro": ModelCapacity("pro", 10, 10 / 60, step_s=60),
        "lite": ModelCapacity("lite", 20, 20 / 60, step_s=60),
    }
    sizing = size_backlog(loads, shapes, windowed, window_s=60)
    hot, cold = sizing.tiers
    assert (hot.demand.requests, cold.demand.requests) == (30, 10)
    assert hot.demand.tokens_per_request == 300 + 2 * 50
    # 40 requests, 30 a window: the last goes when the second window opens.
    assert sizing.makespan_s == pytest.approx(60.0)
    assert sizing.requests == 40 and sizing.articles == 110
    assert sum(hot.plan.requests.values()) == pytest.approx(30)  # type: ignore[union-attr]
    assert hot.plan.requests.get("pro", 0) <= 20 + 1e-6  # type: ignore[union-attr]
    per_window = cold.per_window(60)
    assert hot.finish_s is not None and cold.finish_s is not None
    windows = windows_spanned(cold.finish_s, 60)
    assert per_window["lite"] == pytest.approx(cold.plan.requests["lite"] / windows)  # type: ignore[union-attr]
    assert sizing.bottleneck() and sizing.bottleneck()[0].split(":")[0] in ("hot", "cold")
    assert sizing.empty_tiers == ()
    with pytest.raises(ValueError, match="'warm' has no shape"):
        size_backlog((TierLoad("warm", 0, 1),), shapes, windowed)


def test_an_empty_tier_has_no_plan_and_is_named() -> None:
    shapes = (TierShape("hot", 0, ("pro",), 2), TierShape("cold", 1, ("pro",), 5))
    capacity = {"pro": ModelCapacity("pro", 10, 10 / 60, step_s=60)}
    sizing = size_backlog((TierLoad("hot", 0, 4), TierLoad("cold", 1, 0)), shapes, capacity)
    assert sizing.empty_tiers == ("cold",)
    assert sizing.tiers[1].plan is None and sizing.tiers[1].finish_s == 0.0
    assert sizing.makespan_s == 0.0  # two requests, ten may go now


def test_format_duration() -> None:
    assert format_duration(0) == "0 s"
    assert format_duration(4.25) == "4.2 s"
    assert format_duration(42) == "42 s"
    assert format_duration(200) == "3 min 20 s"
    assert format_duration(3 * 3600 + 40 * 60) == "3 h 40 min"
    assert format_duration(2 * 86400 + 5 * 3600) == "2 d 5 h"
    assert format_duration(math.inf) == "never"


# ---- tierbatch plan --------------------------------------------------------------


def write(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_plan_of_a_file_prints_split_plan_bound_and_bottleneck(tmp_path: Path) -> None:
    articles = write_jsonl(tmp_path / "in.jsonl", [*backlog(60, 50), "not json"])
    code, out, _ = run_cli("plan", str(articles), "--config", str(write(tmp_path)))
    assert code == EXIT_OK, out
    assert f"backlog: 110 article(s) from {articles}" in out
    assert "capacity: fresh quotas" in out
    assert "tiers: 110 article(s) of the backlog, by min_priority" in out  # as run prints it
    assert "  hot        60 article(s)   54.5%  (min_priority >= 0.5)" in out
    assert "  cold       50 article(s)   45.5%  (the rest)" in out
    assert "requests: hot 30 of up to 2 article(s), cold 10 of up to 5 article(s)" in out
    assert "route:" not in out  # no tier may use the Batch API
    assert "warning: 1 input line(s) or row(s) are not usable articles (skipped)" in out
    assert "bound: the last request can go after 1 min at the earliest" in out
    assert "with these quotas this backlog takes 1 min;" in out
    assert "requests per minute is the bottleneck for" in out or "are the bottleneck" in out

    code, text, _ = run_cli("plan", str(articles), "--config", str(write(tmp_path)), "--json")
    assert code == EXIT_OK
    plan = json.loads(text)
    assert plan["articles"] == 110 and plan["unusable"] == 1
    assert plan["makespan_s"] == pytest.approx(60.0) and plan["bound_s"] == pytest.approx(60.0)
    hot, cold = plan["tiers"]
    assert (hot["tier"], hot["articles"], hot["requests"]) == ("hot", 60, 30)
    assert (cold["tier"], cold["articles"], cold["requests"]) == ("cold", 50, 10)
    assert hot["chain"] == ["pro", "lite"] and cold["chain"] == ["lite"]
    assert hot["max_articles_per_request"] == 2
    # Every request placed, on the tier's chain, within each model's two windows.
    for tier in (hot, cold):
        assert sum(m["requests"] for m in tier["models"].values()) == pytest.approx(
            tier["requests"]
        )
        assert set(tier["models"]) <= set(tier["chain"])
    used = {
        m: hot["models"].get(m, {}).get("requests", 0)
        + cold["models"].get(m, {}).get("requests", 0)
        for m in ("pro", "lite")
    }
    assert used["pro"] <= 20 + 1e-6 and used["lite"] <= 40 + 1e-6
    assert all(b["kind"] == "requests" for t in plan["tiers"] for b in t["binding"])
    assert plan["models"]["pro"]["requests_per_window"] == pytest.approx(10)
    assert plan["models"]["pro"]["left_today"] is None  # no daily limit


def test_plan_warns_of_an_empty_tier(tmp_path: Path) -> None:
    articles = write_jsonl(tmp_path / "in.jsonl", backlog(6, 0))
    code, out, _ = run_cli("plan", str(articles), "--config", str(write(tmp_path)))
    assert code == EXIT_OK
    assert "warning: tier 'cold' is empty: no article's priority falls in it" in out
    code, text, _ = run_cli("plan", str(articles), "--config", str(write(tmp_path)), "--json")
    assert json.loads(text)["empty_tiers"] == ["cold"]


def test_plan_of_nothing(tmp_path: Path) -> None:
    articles = write_jsonl(tmp_path / "in.jsonl", [])
    code, out, _ = run_cli("plan", str(articles), "--config", str(write(tmp_path)))
    assert code == EXIT_OK
    assert "nothing to plan: the backlog is empty" in out


def taught_snapshot(cfg: Config) -> dict[str, Any]:
    """A snapshot whose pro learnt that the provider admits 5 a minute."""
    policy = QuotaPolicy(cfg.models, cfg.quota)
    now = datetime.now(UTC).timestamp() - 120  # its window has passed
    grants = [policy.grant("pro", 10, now + i * 0.01) for i in range(6)]
    for grant in grants[:5]:
        policy.report(grant.grant_id, Succeeded(Usage(10, 5)), now + 1)
    policy.report(
        grants[5].grant_id, RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 50.0), now + 1
    )
    assert policy.status(now + 1)[0].learnt_rpm == 5
    return policy.snapshot()


def test_plan_reads_the_queue_and_plans_on_its_snapshot(tmp_path: Path) -> None:
    cfg_path = write(tmp_path)
    db = tmp_path / "q.sqlite"
    # 45 + 10 requests: two windows of 30, three of 25 once pro admits 5.
    articles = write_jsonl(tmp_path / "in.jsonl", backlog(90, 50))
    assert run_cli("enqueue", str(articles), "--db", str(db))[0] == EXIT_OK
    code, text, _ = run_cli("plan", "--db", str(db), "--config", str(cfg_path), "--json")
    assert code == EXIT_OK
    fresh = json.loads(text)
    assert fresh["source"] == f"the database {db} (queued and leased)"
    assert fresh["articles"] == 140 and fresh["capacity_source"]["snapshot"] is None
    assert fresh["makespan_s"] == pytest.approx(60.0)

    SnapshotFile(f"{db}.quota.msgpack").save(taught_snapshot(config()))
    code, text, _ = run_cli("plan", "--db", str(db), "--config", str(cfg_path), "--json")
    learnt = json.loads(text)
    assert learnt["capacity_source"]["snapshot"] == f"{db}.quota.msgpack"
    assert learnt["models"]["pro"]["requests_per_window"] == pytest.approx(5)
    assert learnt["makespan_s"] == pytest.approx(120.0)  # pro admits half: a window more
    code, out, _ = run_cli("plan", "--db", str(db), "--config", str(cfg_path))
    assert "capacity: the quota snapshot" in out and "limits learnt from the provider" in out
    code, text, _ = run_cli("plan", "--db", str(db), "--config", str(cfg_path), "--json", "--fresh")
    assert json.loads(text)["makespan_s"] == fresh["makespan_s"]


def test_plan_needs_a_backlog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERBATCH_DB", raising=False)
    code, _, err = run_cli("plan")
    assert code == EXIT_USAGE and "give ARTICLES.jsonl, --sample or --db" in err
    code, _, err = run_cli("plan", str(tmp_path / "none.jsonl"))
    assert code == EXIT_USAGE and "no such file" in err
    code, _, err = run_cli("plan", "--db", str(tmp_path / "none.sqlite"))
    assert code == EXIT_USAGE and "no such database" in err


def test_plan_of_the_sample_under_the_demo_config() -> None:
    code, text, _ = run_cli("plan", "--sample", "--json")
    assert code == EXIT_OK
    plan = json.loads(text)
    assert plan["source"].startswith("the shipped sample")
    assert plan["articles"] == 405 and not plan["empty_tiers"]
    # More than a window's worth: two windows, the second at one minute.
    assert plan["bound_s"] == pytest.approx(60.0)
    assert {t["tier"] for t in plan["tiers"]} == {"hot", "warm", "cold"}


def test_the_demo_config_over_claims_flash_for_the_simulated_provider() -> None:
    demo = load_demo_config()
    enforced = demo.simulation.enforced(demo.models)
    assert demo.models["gemini-2.5-flash"].rpm == 20
    assert enforced["gemini-2.5-flash"].rpm == 10
    assert enforced["gemini-2.5-pro"] == demo.models["gemini-2.5-pro"]
    articles, rejects = sample_articles(NOW)
    assert not rejects
    assert max(a.published_at for a in articles if a.published_at) == NOW
    report = plan_for(demo, articles, None, NOW.timestamp(), source="sample")
    assert report.bound_s == pytest.approx(60.0)


def test_run_ends_with_the_bound_of_its_queue(tmp_path: Path) -> None:
    cfg_path = write(
        tmp_path, CONFIG.replace("rpm = 10", "rpm = 600").replace("rpm = 20", "rpm = 600")
    )
    articles = write_jsonl(tmp_path / "in.jsonl", backlog(6, 5))
    db = tmp_path / "r.sqlite"
    code, out, _ = run_cli(
        "run", str(articles), "--db", str(db), "--config", str(cfg_path), "--no-progress"
    )
    assert code == EXIT_OK, out
    assert "plan: hot: 6 article(s) in 3 request(s) on pro 3; last one after 0 s" in out
    assert "plan: cold: 5 article(s) in 1 request(s) on lite 1; last one after 0 s" in out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith(
        "bound: with the quotas at the start, this backlog's last request could go after "
        "0.0 s at the earliest"
    ), last
    assert query(db, "SELECT COUNT(*) FROM results") == [(11,)]


def test_the_plans_tier_split_is_the_one_a_run_makes(tmp_path: Path) -> None:
    """The plan scores articles with the composer's own code: a run of the
    same file puts exactly as many articles in each tier."""
    text = (
        CONFIG.replace("hotness_weight = 0.0", "hotness_weight = 1.0")
        .replace("goodness_weight = 1.0", "goodness_weight = 0.0")
        .replace("rpm = 10", "rpm = 6000")
        .replace("rpm = 20", "rpm = 6000")
    )
    cfg_path = write(tmp_path, text)
    now = datetime.now(UTC)

    def published(minutes: int) -> str:
        return (now - timedelta(minutes=minutes)).isoformat()

    lines = [
        *(
            line(f"big{i}", "a.example", cluster_id="big", published_at=published(i))
            for i in range(30)
        ),
        *(
            line(f"mid{i}", "b.example", cluster_id="mid", published_at=published(i))
            for i in range(5)
        ),
        *(
            line(f"one{i}", "c.example", cluster_id=f"one{i}", published_at=published(i))
            for i in range(9)
        ),
    ]
    articles = write_jsonl(tmp_path / "in.jsonl", lines)
    code, out, _ = run_cli("plan", str(articles), "--config", str(cfg_path), "--json")
    assert code == EXIT_OK
    planned = {t["tier"]: t["articles"] for t in json.loads(out)["tiers"]}
    assert planned == {"hot": 30, "cold": 14}
    db = tmp_path / "r.sqlite"
    code, out, _ = run_cli(
        "run", str(articles), "--db", str(db), "--config", str(cfg_path), "--no-progress"
    )
    assert code == EXIT_OK, out
    ran = dict(query(db, "SELECT tier, COUNT(*) FROM results GROUP BY tier"))
    assert ran == planned
