"""What the registry learnt of the provider -- limits below the configured
ones, the burst, the limiter's shape -- shows in ``tierbatch status``, the
live display, the progress log line, the Prometheus metrics and the
end-of-run summary, read from the same ``ModelStatus`` fields."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import structlog
from cli_helpers import sample_lines, write_jsonl

from tierbatch.actors.runtime import RuntimeStats
from tierbatch.adapters.app.cli import EXIT_OK, main
from tierbatch.adapters.app.learnt_limits import LearntLimits, limit_text
from tierbatch.adapters.app.metrics import Metrics
from tierbatch.adapters.app.progress import LogProgress, ProgressView, render_view
from tierbatch.adapters.app.status_report import read_status, render_status
from tierbatch.adapters.app.summary import (
    BoundReport,
    ModelUsage,
    ResultTally,
    build_summary,
    render_summary,
    usage_between,
)
from tierbatch.adapters.storage.snapshot_file import SnapshotFile
from tierbatch.adapters.storage.sqlite_store import SqliteStore, default_owner
from tierbatch.policies.config import (
    ComposerConfig,
    Config,
    LimiterMode,
    ModelSpec,
    QuotaConfig,
    TierSpec,
)
from tierbatch.policies.outcomes import RateLimited, RateLimitScope, Succeeded, Usage
from tierbatch.policies.planner import Binding, Plan, TierPlan
from tierbatch.policies.quota import ModelStatus, QuotaPolicy
from tierbatch.policies.results import Done

MODEL = "m-pro"
NOW = 1_800_000_000.0


def config() -> Config:
    return Config(
        models={MODEL: ModelSpec(MODEL, rpm=240, tpm=0, rpd=0)},
        tiers=(TierSpec("hot", 0.0, MODEL),),
        global_fallback=MODEL,
        composer=ComposerConfig({"hot": 1}),
        quota=QuotaConfig(limiter=LimiterMode.WINDOW),
    )


def taught_policy() -> QuotaPolicy:
    """A policy that met a per-minute 429 after ten requests, with 240
    configured: the provider admits less than the config says."""
    cfg = config()
    policy = QuotaPolicy(cfg.models, cfg.quota)
    grants = [policy.grant(MODEL, 10, NOW + i * 0.01) for i in range(11)]
    for grant in grants[:10]:
        policy.report(grant.grant_id, Succeeded(Usage(10, 5)), NOW + 1)
    policy.report(
        grants[10].grant_id, RateLimited(RateLimitScope.REQUESTS_PER_MINUTE, 50.0), NOW + 1
    )
    return policy


def status_with(**learnt: object) -> ModelStatus:
    base = ModelStatus(
        model=MODEL,
        requests_in_window=12,
        tokens_in_window=0,
        requests_today=40,
        in_flight=1,
        cooldown_until=None,
        cooldown_reason=None,
        exhausted_until=None,
        unavailable=None,
        counters={},
        configured_rpm=240,
        configured_tpm=4000,
        learnt_rpm=240,
        learnt_tpm=4000,
        burst=60.0,
        limiter="unknown",
    )
    return replace(base, **learnt)  # type: ignore[arg-type]


def runtime_stats(status: ModelStatus) -> RuntimeStats:
    return RuntimeStats(
        submitted=3,
        queued=2,
        queued_by_tier={"hot": 2},
        in_extractors=0,
        in_flight_requests=1,
        done=1,
        failed=0,
        done_by_tier={"hot": 1},
        failed_by_tier={},
        done_by_model={MODEL: 1},
        failed_by_reason={},
        fallbacks=0,
        requeued_after_crash=0,
        models=(status,),
        cooldowns={},
        paused=None,
    )


def test_limit_texts() -> None:
    assert limit_text(240, 240) == "240"
    assert limit_text(240, 120) == "configured 240, learnt 120"
    assert limit_text(0, 0) == "∞"
    learnt = LearntLimits.of(status_with(learnt_rpm=120, burst=20.0, limiter="bucket"))
    assert learnt.lowered
    assert learnt.rpm_text == "configured 240, learnt 120"
    assert learnt.burst_text == "20 (bucket)"
    assert learnt.sentence() == (
        "m-pro: rpm configured 240, learnt 120, burst 20 of 120 a window, limiter bucket"
    )
    assert not LearntLimits.of(status_with()).lowered


def test_status_shows_the_limits_learnt_in_the_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    SqliteStore(db, owner=default_owner()).close()
    snapshot = tmp_path / "q.sqlite.quota.msgpack"
    SnapshotFile(snapshot).save(taught_policy().snapshot())
    status = read_status(db, snapshot, config(), now=NOW + 2)
    (quota,) = status.quota
    assert (quota.configured_rpm, quota.learnt_rpm) == (240, 120)
    assert quota.limiter == "window"
    assert quota.burst == 120
    as_json = status.to_json()["quota"][0]
    assert as_json["learnt_rpm"] == 120 and as_json["configured_rpm"] == 240
    text = io.StringIO()
    render_status(status, text)
    assert "configured 240, learnt 120" in text.getvalue()
    assert "120 (window)" in text.getvalue()


def test_status_command_prints_learnt_limits_as_json(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    SqliteStore(db, owner=default_owner()).close()
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'global_fallback = "{MODEL}"\n[models."{MODEL}"]\nrpm = 240\ntpm = 0\nrpd = 0\n'
        f'[[tiers]]\nname = "hot"\nmin_priority = 0.0\nmodel = "{MODEL}"\n'
        '[composer]\nmix = { hot = 1 }\n[quota]\nlimiter = "window"\n',
        encoding="utf-8",
    )
    SnapshotFile(f"{db}.quota.msgpack").save(taught_policy().snapshot())
    out = io.StringIO()
    code = main(["status", "--db", str(db), "--config", str(cfg), "--json"], stdout=out)
    assert code == EXIT_OK
    (quota,) = json.loads(out.getvalue())["quota"]
    assert quota["learnt_rpm"] == 120 and quota["configured_rpm"] == 240


def test_live_display_shows_learnt_limits_burst_and_the_plan() -> None:
    status = status_with(learnt_rpm=120, burst=20.0, limiter="bucket")
    plan = Plan(
        (TierPlan("hot", 0, 30.0, {MODEL: 30.0}, 42.0, (Binding(MODEL, "requests"),), (MODEL,)),),
        makespan_s=42.0,
        horizon_s=600.0,
    )
    view = ProgressView(
        elapsed_s=3.0,
        now=NOW,
        stats=runtime_stats(status),
        finished=1,
        rate_per_s=0.3,
        db_counts=None,
        models=config().models,
        plan=plan,
    )
    text = io.StringIO()
    from rich.console import Console

    Console(file=text, width=200).print(render_view(view, "t"))
    shown = text.getvalue()
    assert "12 / configured 240, learnt 120" in shown
    assert "20 (bucket)" in shown
    assert "backlog done in 42 s" in shown
    assert "hot: m-pro 30; done in 42 s" in shown


def test_progress_log_line_carries_the_learnt_limits() -> None:
    status = status_with(learnt_rpm=120, burst=20.0, limiter="bucket")
    view = ProgressView(
        elapsed_s=3.0,
        now=NOW,
        stats=runtime_stats(status),
        finished=1,
        rate_per_s=0.3,
        db_counts=None,
        models=config().models,
    )
    reporter = LogProgress(interval_s=3600)
    reporter.update(view)
    with structlog.testing.capture_logs() as logs:
        reporter.stop()
    (line,) = [entry for entry in logs if entry["event"] == "progress"]
    assert line["limits"][MODEL] == {
        "configured_rpm": 240,
        "learnt_rpm": 120,
        "configured_tpm": 4000,
        "learnt_tpm": 4000,
        "burst": 20.0,
        "limiter": "bucket",
    }


def test_metrics_export_configured_and_learnt_limits() -> None:
    metrics = Metrics()
    status = status_with(learnt_rpm=120, learnt_tpm=3000, burst=20.0, limiter="bucket")
    metrics.update(runtime_stats(status), NOW)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"model": MODEL, **labels})

    assert sample("tierbatch_configured_rpm") == 240
    assert sample("tierbatch_learnt_rpm") == 120
    assert sample("tierbatch_configured_tpm") == 4000
    assert sample("tierbatch_learnt_tpm") == 3000
    assert sample("tierbatch_learnt_burst") == 20
    assert sample("tierbatch_limiter_shape", shape="bucket") == 1
    assert sample("tierbatch_limiter_shape", shape="window") == 0
    assert sample("tierbatch_limiter_shape", shape="unknown") == 0


def test_summary_says_what_was_learnt_and_how_close_to_the_bound() -> None:
    before = status_with(counters={"granted": 0})
    after = status_with(
        learnt_rpm=120, burst=20.0, limiter="bucket", counters={"granted": 5, "rate_limited": 1}
    )
    usage = usage_between((before,), (after,))
    assert usage == (ModelUsage(MODEL, 5, 1, 0.0, 0, 0, LearntLimits.of(after)),)
    tally = ResultTally()
    tally.add([Done("a", (), MODEL, "hot", 1, 100, 10, 1.0)])
    summary = build_summary(
        config(),
        provider="simulated",
        synthetic=True,
        elapsed_s=50.0,
        tally=tally.snapshot(),
        usage=usage,
        bound=BoundReport(40.0, 50.0, ("hot: m-pro requests",)),
    )
    out = io.StringIO()
    render_summary(summary, out)
    text = out.getvalue()
    assert "240→120" in text
    assert "20 (bucket)" in text
    assert (
        "learnt from the provider: m-pro: rpm configured 240, learnt 120, "
        "burst 20 of 120 a window, limiter bucket" in text
    )
    assert text.rstrip().splitlines()[-1] == (
        "bound: with the quotas at the start, this backlog's last request could go after "
        "40.0 s at the earliest (hot: m-pro requests); the run took 50.0 s: 80% of the bound"
    )


def test_a_run_summary_has_the_learnt_columns(tmp_path: Path) -> None:
    articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(5))
    out = io.StringIO()
    code = main(
        ["run", str(articles), "--db", str(tmp_path / "r.sqlite"), "--no-progress"],
        stdout=out,
        stderr=io.StringIO(),
    )
    assert code == EXIT_OK
    assert "rpm" in out.getvalue() and "burst" in out.getvalue()
    assert "learnt from the provider:" in out.getvalue()
