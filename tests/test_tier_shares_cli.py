"""Tiers by share end to end: ``tierbatch run`` on a generated feed whose
priorities all sit below the absolute thresholds, the split it prints, the
thresholds ``status`` shows, and ``--as-of`` for a replay of an old feed."""

from __future__ import annotations

import io
import json
import random
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_helpers import DaemonProcess, child_env, query, states, wait_until

from tierbatch.actors.clock import ScaledClock
from tierbatch.adapters.app.cli import EXIT_OK, EXIT_USAGE, main
from tierbatch.adapters.app.daemon import Daemon, DaemonOptions, StopReason, default_snapshot_path
from tierbatch.adapters.app.provider_factory import make_provider
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.adapters.storage.ingest import ingest_jsonl
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.adapters.storage.sqlite_store import SqliteStore, default_owner
from tierbatch.adapters.storage.tiers_file import default_tiers_path, read_tiers
from tierbatch.policies.articles import Article

AS_OF = datetime(2026, 11, 24, 12, tzinfo=UTC)
AS_OF_TEXT = "2026-11-24T12:00:00Z"


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def write_feed(path: Path, n: int, *, end: datetime, clusters: int, seed: int) -> Path:
    """``n`` articles over the 36 h before ``end``, from a seeded random:
    clusters picked at random, sources of middling goodness."""
    rng = random.Random(seed)
    domains = ["daily.example", "blog.example", "local.example", "wire.example"]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            at = end - timedelta(seconds=rng.uniform(0, 36 * 3600))
            article = {
                "id": f"a{i}",
                "title": f"Story {i}",
                "text": f"Maria Lopez met Acme Corp in Paris about item {i}.",
                "source_domain": rng.choice(domains),
                "cluster_id": f"c{rng.randrange(clusters)}",
                "published_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            f.write(json.dumps(article) + "\n")
    return path


def write_config(path: Path, *, hot: str, warm: str) -> Path:
    """Three tiers, the built-in priority formula, the simulated provider."""
    path.write_text(
        f"""global_fallback = "m-lite"

[models."m-pro"]
rpm = 60000
tpm = 100_000_000
rpd = 0

[models."m-lite"]
rpm = 60000
tpm = 100_000_000
rpd = 0

[[tiers]]
name = "hot"
{hot}
model = "m-pro"
max_articles_per_request = 10

[[tiers]]
name = "warm"
{warm}
model = "m-lite"
max_articles_per_request = 10

[[tiers]]
name = "cold"
model = "m-lite"
{"min_priority = 0.0" if "min_priority" in hot else ""}
max_articles_per_request = 10

[composer]
mix = {{ hot = 4, warm = 6, cold = 10 }}

[runtime]
extractors = 2
max_packs_in_flight = 64

[provider]
kind = "simulated"
""",
        encoding="utf-8",
    )
    return path


def served_by_tier(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT tier, COUNT(*) FROM results GROUP BY tier"))


def split_of(out: str) -> dict[str, int]:
    """The tier split lines ``  hot   64 article(s) ...`` of a run's output."""
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^  (\w+)\s+(\d+) article\(s\)", out, flags=re.MULTILINE)
    }


@pytest.fixture(scope="module")
def low_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 articles in 150 clusters: no priority reaches 0.7 (hot is empty
    by threshold)."""
    folder = tmp_path_factory.mktemp("feed")
    return write_feed(folder / "feed.jsonl", 600, end=AS_OF, clusters=150, seed=13)


def test_absolute_thresholds_leave_hot_empty_and_say_so(
    low_feed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "t.toml", hot="min_priority = 0.7", warm="min_priority = 0.4")
    db = tmp_path / "t.sqlite"
    code, out, err = run_cli(
        "run", str(low_feed), "--db", str(db), "--config", str(config), "--no-progress",
        "--as-of", AS_OF_TEXT, "--log-json",
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert "tiers: 600 article(s) of the input, by min_priority" in out
    assert split_of(out)["hot"] == 0
    assert "warning: tier hot receives no article of the input" in err
    assert "give the tier a share" in err
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "{" in line]
    warnings = [e for e in logged if e.get("event") == "tier receives no article of the input"]
    assert [e["tier"] for e in warnings][:1] == ["hot"] and warnings[0]["level"] == "warning"
    assert "hot" not in served_by_tier(db)


def test_share_tiers_fill_hot_with_its_tenth_and_serve_the_split_printed(
    low_feed: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "s.toml", hot="share = 0.1", warm="share = 0.3")
    db = tmp_path / "s.sqlite"
    code, out, err = run_cli(
        "run", str(low_feed), "--db", str(db), "--config", str(config), "--no-progress",
        "--as-of", AS_OF_TEXT,
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert "tiers: 600 article(s) of the input, by share over 600 recent priorities" in out
    split = split_of(out)
    assert split["hot"] / 600 == pytest.approx(0.10, abs=0.02)
    assert (split["hot"] + split["warm"]) / 600 == pytest.approx(0.40, abs=0.03)
    assert sum(split.values()) == 600
    assert "receives no article" not in err
    # The split printed at the start is what each tier was served.
    assert served_by_tier(db) == split
    # status shows the thresholds the shares imply, as the run used them.
    threshold = re.search(r"hot .*share 10%: min_priority >= (\d\.\d+)", out)
    assert threshold is not None
    code, text, _ = run_cli("status", "--db", str(db), "--config", str(config))
    assert code == EXIT_OK
    assert "thresholds the shares imply over 600 recent priorities" in text
    assert f"hot: share 10%, min_priority >= {threshold.group(1)}" in text
    assert "cold: the rest" in text
    code, raw, _ = run_cli("status", "--db", str(db), "--config", str(config), "--json")
    rules = json.loads(raw)["tier_rules"]
    assert rules["window"] == 600 and rules["as_of"] == AS_OF.timestamp()
    hot = rules["tiers"][0]
    assert (hot["tier"], hot["share"]) == ("hot", 0.1)
    assert hot["min_priority"] == pytest.approx(float(threshold.group(1)), abs=5e-4)


def test_share_tiers_seed_from_stdin_too(
    low_feed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "s.toml", hot="share = 0.1", warm="share = 0.3")
    db = tmp_path / "stdin.sqlite"
    stdin = io.TextIOWrapper(io.BytesIO(low_feed.read_bytes()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run_cli(
        "run", "-", "--db", str(db), "--config", str(config), "--no-progress",
        "--as-of", "newest",
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert "as of: " in out and "(the newest article of the input)" in out
    split = split_of(out)
    assert sum(split.values()) == 600 and served_by_tier(db) == split
    assert split["hot"] / 600 == pytest.approx(0.10, abs=0.02)


def test_as_of_newest_keeps_a_replay_of_last_weeks_feed_from_being_all_cold(
    tmp_path: Path,
) -> None:
    week_ago = datetime.now(UTC) - timedelta(days=7)
    feed = write_feed(tmp_path / "old.jsonl", 300, end=week_ago, clusters=12, seed=5)
    config = write_config(tmp_path / "t.toml", hot="min_priority = 0.4", warm="min_priority = 0.3")
    code, out, err = run_cli(
        "run", str(feed), "--db", str(tmp_path / "wall.sqlite"), "--config", str(config),
        "--no-progress",
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert split_of(out)["hot"] == 0 and "warning: tier hot receives no article" in err
    db = tmp_path / "replay.sqlite"
    code, out, err = run_cli(
        "run", str(feed), "--db", str(db), "--config", str(config), "--no-progress",
        "--as-of", "newest",
    )  # fmt: skip
    assert code == EXIT_OK, err
    newest = max(json.loads(line)["published_at"] for line in feed.read_text().splitlines() if line)
    assert f"as of: {newest} (the newest article of the input)" in out
    split = split_of(out)
    assert split["hot"] >= 30, out
    assert served_by_tier(db) == {k: v for k, v in split.items() if v}


def test_tied_priorities_do_not_all_go_to_the_top_share_tier(tmp_path: Path) -> None:
    """Regression: a share tier took the whole histogram bin where its rank
    fell, so a feed whose priorities tie (last week's feed scored against
    the wall clock: no hotness left, every source of default goodness) put
    every article in the hot tier, at the hot tier's price."""
    week_ago = datetime.now(UTC) - timedelta(days=7)
    feed = write_feed(tmp_path / "old.jsonl", 400, end=week_ago, clusters=40, seed=9)
    config = write_config(tmp_path / "s.toml", hot="share = 0.1", warm="share = 0.3")
    db = tmp_path / "ties.sqlite"
    code, out, err = run_cli(
        "run", str(feed), "--db", str(db), "--config", str(config), "--no-progress"
    )
    assert code == EXIT_OK, err
    split = split_of(out)
    assert split["hot"] / 400 == pytest.approx(0.10, abs=0.04), out
    assert split["warm"] / 400 == pytest.approx(0.30, abs=0.06), out
    assert served_by_tier(db) == split


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", ""])
def test_a_bad_as_of_is_a_usage_error_naming_the_flag(
    bad: str, low_feed: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(
        "run", str(low_feed), "--db", str(tmp_path / "x.sqlite"), "--no-progress", "--as-of", bad
    )
    assert code == EXIT_USAGE
    assert f"--as-of {bad}: expected 'newest' or an ISO 8601 instant" in err
    assert not (tmp_path / "x.sqlite").exists()  # refused before anything was queued


def test_the_daemon_ranks_a_stream_over_its_sliding_window_and_saves_thresholds(
    low_feed: Path, tmp_path: Path
) -> None:
    """No seeding: the window fills as articles are leased and submitted,
    and the top tenth still lands in hot."""
    config = load_config(write_config(tmp_path / "s.toml", hot="share = 0.1", warm="share = 0.3"))
    db = tmp_path / "stream.sqlite"
    store = SqliteStore(db, owner=default_owner())
    tiers_file = tmp_path / "stream.tiers.json"
    try:
        ingest_jsonl(store, low_feed)
        clock = ScaledClock(speed=20.0)
        provider, _ = make_provider(config, clock)
        daemon = Daemon(
            config,
            store,
            provider=provider,
            snapshot=SnapshotFile(default_snapshot_path(db)),
            options=DaemonOptions(poll_interval_s=0.05, exit_when_done=True),
            clock=clock,
            as_of=AS_OF.timestamp(),
            tiers_file=tiers_file,
        )
        report = daemon.run()
    finally:
        store.close()
    assert report.reason is StopReason.FINISHED
    served = served_by_tier(db)
    assert sum(served.values()) == 600
    assert served["hot"] / 600 == pytest.approx(0.10, abs=0.04)
    assert served["warm"] / 600 == pytest.approx(0.30, abs=0.06)
    saved = read_tiers(tiers_file)
    assert saved is not None and saved.as_of == AS_OF.timestamp()
    assert [t.tier for t in saved.tiers] == ["hot", "warm", "cold"]
    assert saved.tiers[0].min_priority >= saved.tiers[1].min_priority > 0.0


def test_daemon_as_of_scores_a_backfill_against_the_instant(low_feed: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "s.toml", hot="share = 0.1", warm="share = 0.3")
    db = tmp_path / "backfill.sqlite"
    code, _, err = run_cli("enqueue", str(low_feed), "--db", str(db))
    assert code == EXIT_OK, err
    args = ["daemon", "--db", str(db), "--config", str(config), "--as-of", AS_OF_TEXT]
    with DaemonProcess(args, child_env()) as daemon:
        daemon.wait_for_event("daemon ready")
        wait_until(lambda: states(db).get("done", 0) == 600, 60, "every article done")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.stderr()
        assert f"as of: {AS_OF_TEXT}" in daemon.stdout()
    saved = read_tiers(default_tiers_path(db))
    assert saved is not None and saved.as_of == AS_OF.timestamp()
    assert served_by_tier(db)["hot"] / 600 == pytest.approx(0.10, abs=0.04)


def test_daemon_as_of_newest_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run_cli("daemon", "--db", str(tmp_path / "d.sqlite"), "--as-of", "newest")
    assert code == EXIT_USAGE
    assert "--as-of newest: a daemon has no input" in err


def test_an_input_that_cannot_be_read_again_runs_unseeded(low_feed: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "s.toml", hot="share = 0.1", warm="share = 0.3"))
    db = tmp_path / "unseeded.sqlite"
    store = SqliteStore(db, owner=default_owner())
    told: list[object] = []

    def gone() -> list[Article]:
        raise FileNotFoundError(2, "No such file or directory", str(low_feed))

    try:
        ingest_jsonl(store, low_feed)
        clock = ScaledClock(speed=20.0)
        provider, _ = make_provider(config, clock)
        report = Daemon(
            config,
            store,
            provider=provider,
            snapshot=SnapshotFile(default_snapshot_path(db)),
            options=DaemonOptions(poll_interval_s=0.05, exit_when_done=True),
            clock=clock,
            as_of=AS_OF.timestamp(),
            tier_seed=gone,
            on_tier_split=told.append,
        ).run()
    finally:
        store.close()
    assert report.reason is StopReason.FINISHED and not told
    assert sum(served_by_tier(db).values()) == 600
