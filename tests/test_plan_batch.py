"""``tierbatch plan`` and the Batch API: the tier split printed as ``run``
prints it (by rank for a ladder of shares), which tiers would go to batch
and why (their mode, an ``auto`` tier's deadline, the daily budget), and a
database's batch jobs in flight, whose articles are not in its backlog."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cli_helpers import write_jsonl
from test_plan import CONFIG, backlog, run_cli, write
from test_tier_shares_cli import AS_OF, split_of, write_feed
from test_tier_shares_cli import write_config as write_share_config

from tierbatch.adapters.app.cli import EXIT_OK
from tierbatch.adapters.storage.batch_store import BatchJobStore
from tierbatch.adapters.storage.sqlite_store import SqliteStore
from tierbatch.policies.batch_jobs import JobRequest

BATCH_CONFIG = (
    CONFIG.replace('name = "hot"\n', 'name = "hot"\nmode = "auto"\nmax_latency_s = 30\n', 1)
    .replace('name = "cold"\n', 'name = "cold"\nmode = "batch"\n', 1)
    .replace('[provider]\nkind = "simulated"\n', '[provider]\nkind = "simulated"\n\n[budget]\n')
)


def test_plan_splits_a_ladder_of_shares_by_rank_as_run_does(tmp_path: Path) -> None:
    """Before, the plan placed articles by the share tiers' min_priority
    (which a share tier does not have): every article fell in the top tier."""
    feed = write_feed(tmp_path / "feed.jsonl", 600, end=AS_OF, clusters=150, seed=13)
    config = write_share_config(tmp_path / "s.toml", hot="share = 0.1", warm="share = 0.3")
    code, text, _ = run_cli("plan", str(feed), "--config", str(config), "--json")
    assert code == EXIT_OK, text
    planned = {t["tier"]: t["articles"] for t in json.loads(text)["tiers"]}
    assert 0.08 <= planned["hot"] / 600 <= 0.12
    assert 0.37 <= (planned["hot"] + planned["warm"]) / 600 <= 0.43
    assert sum(planned.values()) == 600
    assert json.loads(text)["split"]["uses_shares"]
    code, out, _ = run_cli("plan", str(feed), "--config", str(config))
    assert "tiers: 600 article(s) of the backlog, by share over 600 recent priorities" in out
    assert split_of(out) == planned
    assert re.search(r"hot .*share 10%: min_priority >= \d\.\d+", out)


def test_plan_says_which_tiers_go_to_batch_and_why(tmp_path: Path) -> None:
    articles = write_jsonl(tmp_path / "in.jsonl", backlog(120, 50))
    # hot's 60 requests need two windows of pro and lite (its last goes after
    # 1 min): over its 30 s deadline. cold, on the Batch API, takes none of them.
    config = write(tmp_path, BATCH_CONFIG.replace("[budget]\n", "[budget]\nusd_per_day = 5.0\n"))
    code, out, _ = run_cli("plan", str(articles), "--config", str(config))
    assert code == EXIT_OK, out
    assert (
        "route: hot batch (auto: the plan finishes it after 1 min, over its max_latency_s of 30 s)"
        in out
    )
    assert "route: cold batch (mode = batch)" in out
    assert "budget: $0.0000 spent of $5.00 today" in out
    code, text, _ = run_cli("plan", str(articles), "--config", str(config), "--json")
    routes = {r["tier"]: r for r in json.loads(text)["routes"]}
    assert routes["hot"]["reason"] == "latency" and routes["hot"]["max_latency_s"] == 30
    assert routes["cold"]["reason"] == "mode" and routes["cold"]["route"] == "batch"
    # A looser deadline: the interactive quota meets it.
    relaxed = write(tmp_path, BATCH_CONFIG.replace("max_latency_s = 30", "max_latency_s = 600"))
    code, out, _ = run_cli("plan", str(articles), "--config", str(relaxed))
    assert "route: hot interactive (auto: the plan finishes it after 1 min, within its " in out


def test_plan_says_when_the_daily_budget_moves_a_tier_to_batch(tmp_path: Path) -> None:
    articles = write_jsonl(tmp_path / "in.jsonl", backlog(60, 50))
    text = (
        CONFIG.replace("[models.pro]\n", "[models.pro]\nprice_in_per_m = 1.0\n")
        .replace("[models.lite]\n", "[models.lite]\nprice_in_per_m = 0.1\n")
        .replace(
            '[provider]\nkind = "simulated"\n',
            '[provider]\nkind = "simulated"\n\n[budget]\nusd_per_day = 0.001\n'
            'on_exhausted = "batch"\n',
        )
    )
    code, out, _ = run_cli("plan", str(articles), "--config", str(write(tmp_path, text)))
    assert code == EXIT_OK, out
    assert "moved to batch: hot" in out
    assert re.search(
        r"route: hot batch \(moved by the daily budget: its backlog, ~\$0\.\d+ at interactive "
        r"prices, is more than the day has left for it; ~\$0\.\d+ in batch\)",
        out,
    ), out


def test_plan_of_a_database_leaves_out_the_articles_of_batch_jobs_in_flight(
    tmp_path: Path,
) -> None:
    """Before, the articles a batch job holds were planned as interactive work."""
    db = tmp_path / "q.sqlite"
    articles = write_jsonl(tmp_path / "in.jsonl", backlog(6, 4))
    assert run_cli("enqueue", str(articles), "--db", str(db))[0] == EXIT_OK
    store = SqliteStore(db, owner="daemon-1")
    try:
        leased = store.lease(3, 600)
        jobs = BatchJobStore(store, give_up_s=3600.0)
        kept = jobs.begin(
            "tierbatch-j1", "hot", "pro", [JobRequest("r0", tuple(a.id for a in leased))], 60.0
        )
        assert sum(len(r.article_ids) for r in kept) == 3
    finally:
        store.close()
    code, out, _ = run_cli("plan", "--db", str(db), "--config", str(write(tmp_path, BATCH_CONFIG)))
    assert code == EXIT_OK, out
    assert f"backlog: 7 article(s) from the database {db}" in out
    assert (
        "batch jobs: 1 in flight (3 article(s), not in the backlog: the Batch API has them)" in out
    )
    code, text, _ = run_cli(
        "plan", "--db", str(db), "--config", str(write(tmp_path, BATCH_CONFIG)), "--json"
    )
    plan = json.loads(text)
    assert plan["articles"] == 7
    assert plan["batch_jobs"]["in_flight"] == 1 and plan["batch_jobs"]["articles_in_flight"] == 3


def test_the_postgres_backlog_leaves_out_the_articles_of_batch_jobs_too(postgres_url: str) -> None:
    from tierbatch.adapters.storage.open_store import read_backlog
    from tierbatch.adapters.storage.postgres_store import PostgresStore
    from tierbatch.policies.articles import Article

    with PostgresStore(postgres_url, owner="daemon-1") as store:
        store.enqueue([Article(id=f"a{i}", text=f"text {i}") for i in range(5)])
        leased = store.lease(2, 600)
        jobs = BatchJobStore(store, give_up_s=3600.0)
        jobs.begin("tierbatch-j1", "hot", "pro", [JobRequest("r0", (leased[0].id,))], 60.0)
    articles, unusable = read_backlog(postgres_url)
    assert unusable == 0
    assert sorted(a.id for a in articles) == sorted({f"a{i}" for i in range(5)} - {leased[0].id})
