"""The bench harness, end to end on its smallest mode: real HTTP to the local
server (its own process), every core system, the SQLite scale run, the
report. Checks the report's structure and that no article is lost or
doubled -- never timings. The LiteLLM baseline, the LP bound and the plots
need the ``bench`` extra and are skipped without it."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report, run  # noqa: E402
from bench.harness import SystemResult  # noqa: E402
from bench.measure import Recorder  # noqa: E402
from bench.metrics import compute_metrics, percentile  # noqa: E402
from bench.settings import settings_for  # noqa: E402
from bench.workloads import build_workload  # noqa: E402

CORE_SYSTEMS = ("tierbatch-packed", "tierbatch-unpacked", "seed-taskmanager", "openai-parallel")
HAS_SCIPY = importlib.util.find_spec("scipy") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _quiet_without_caching() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=False,
    )


@pytest.fixture(scope="module", autouse=True)
def _bench_logging_kept_in() -> Iterator[None]:
    """The bench configures logging for its own process and caches loggers on
    first use; here that process is pytest's, so its set-up must not outlive
    this module (cached loggers would keep its warning-level filter for every
    later test)."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run, "quiet_logs", _quiet_without_caching)
        try:
            yield
        finally:
            structlog.configure(**saved)
            root.handlers[:] = handlers
            root.setLevel(level)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    run.main(["--mode", "tiny", "--systems", ",".join(CORE_SYSTEMS), "--out", str(out)])
    return out


def _runs(run_dir: Path) -> dict[str, dict]:
    runs = {}
    for path in (run_dir / "runs").glob("*.json"):
        if not path.name.endswith(".spec.json"):
            m = json.loads(path.read_text())
            runs[m["system"]] = m
    return runs


def test_every_system_ran_without_losing_or_doubling_an_article(bench_run: Path) -> None:
    runs = _runs(bench_run)
    assert set(runs) == set(CORE_SYSTEMS)
    for system, m in runs.items():
        assert "error" not in m, (system, m.get("error"))
        assert m["fed"] == m["articles"], system  # a backlog: all handed over at the start
        assert m["lost"] == 0, system
        assert m["duplicated"] == 0, system
        assert m["held_and_terminal"] == 0, system
        assert m["unverified"] == 0, system
        # Every article handed over is terminal or still held, never both.
        assert m["done"] + m["failed"] + m["unfinished"] == m["fed"], system
        assert m["requests"] > 0 and m["done"] > 0, system


def test_results_are_consistent_with_the_server_log(bench_run: Path) -> None:
    for system, m in _runs(bench_run).items():
        admitted = m["status"].get("200", 0)
        assert sum(m["status"].values()) == m["requests"], system
        assert m["status"].get("429", 0) == m["rate_limited"], system
        if system != "tierbatch-packed":
            # One article per request: at most one extracted article per answer.
            assert m["done"] <= admitted, system
        served = sum(v["served"] for v in m["fidelity"].values())
        assert served == m["done_in_horizon"], system
        for tier in m["fidelity"].values():
            if tier["served"]:
                assert tier["chain"] == 1.0, system  # nothing served outside its chain


def test_tierbatch_measures_its_actor_threads(bench_run: Path) -> None:
    m = _runs(bench_run)["tierbatch-packed"]
    threads = m["cpu"]["threads"]
    assert set(threads) == {"actors", "io", "main", "other"}
    assert any(name.startswith("ModelRegistry") for name in m["cpu_by_thread"])
    lags = m["system_stats"]["lags_ms"]
    assert lags["grant_to_call"]["p50"] is not None


def test_tierbatch_reports_what_packing_cost_in_quality(bench_run: Path) -> None:
    m = _runs(bench_run)["tierbatch-packed"]
    rows = m["system_stats"]["grounding"]
    assert sum(r["articles"] for r in rows) == m["done"]
    assert any(r["pack_size"] > 1 for r in rows)
    # The local server's fake model names only what is in each article.
    assert all(r["cross_article"] == r["ungrounded"] == 0 for r in rows)
    text = (bench_run / "report.md").read_text()
    assert "Grounding (each entity checked against its request's articles):" in text
    assert "| system | tier | model | pack size | done | entities |" in text


def test_scale_run_wrote_every_result_once(bench_run: Path) -> None:
    scale = json.loads((bench_run / "scale" / "scale-500.json").read_text())
    assert "error" not in scale, scale.get("error")
    assert scale["processed"] == 100
    assert scale["store_counts"]["done"] + scale["store_counts"]["failed"] == 100
    assert scale["store_counts"]["queued"] == 400
    assert scale["duplicate_results"] == 0


def test_report_has_a_table_per_workload_and_the_targets(bench_run: Path) -> None:
    text = (bench_run / "report.md").read_text()
    for heading in ("## Machine", "## Set-up", "## Results per workload", "### steady"):
        assert heading in text
    assert "## Scale: backlog in SQLite" in text and "## Targets" in text
    assert "| system | articles / quota-min | of bound |" in text
    for system in CORE_SYSTEMS:
        assert f"| {system} |" in text
    machine = json.loads((bench_run / "machine.json").read_text())
    assert machine["cores"] and machine["python"]


@pytest.mark.skipif(not HAS_SCIPY, reason="the LP bound needs scipy (bench extra)")
def test_bound_is_reported_and_never_beaten_unpacked(bench_run: Path) -> None:
    for system, m in _runs(bench_run).items():
        bound = m["bounds"]["unpacked"]
        assert bound is not None
        if system != "tierbatch-packed":
            assert m["done_in_horizon"] <= bound["served_in_horizon"] + 1e-6, system


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="plots need matplotlib (bench extra)")
def test_plots_are_written(bench_run: Path) -> None:
    names = {p.name for p in (bench_run / "plots").glob("*.png")}
    assert names == {"steady-completions.png", "steady-requests.png", "steady-429s.png"}
    assert (
        "![steady-requests.png](plots/steady-requests.png)" in (bench_run / "report.md").read_text()
    )


def test_litellm_router_baseline(tmp_path: Path) -> None:
    pytest.importorskip("litellm")
    run.main(
        ["--mode", "tiny", "--systems", "litellm-router", "--no-scale", "--out", str(tmp_path)]
    )
    m = _runs(tmp_path)["litellm-router"]
    assert "error" not in m and "skipped" not in m, m
    assert m["lost"] == 0 and m["duplicated"] == 0 and m["unverified"] == 0
    assert m["done"] > 0


@pytest.mark.skipif(not HAS_SCIPY, reason="the LP bound needs scipy (bench extra)")
def test_unpacked_bound_is_the_sum_of_request_quotas_over_a_large_backlog() -> None:
    from bench.bound import compute_bound

    settings = settings_for("tiny")
    workload = build_workload(settings, "steady")
    bound = compute_bound(settings, workload, packed=False)
    per_window = sum(m.rpm for m in settings.models)
    assert not bound.drainable
    assert bound.served_in_horizon == pytest.approx(per_window * settings.horizon_windows)
    packed = compute_bound(settings, workload, packed=True)
    assert packed.rate_per_window > bound.rate_per_window  # packing buys throughput


def test_metrics_count_lost_and_duplicated_articles() -> None:
    settings = settings_for("tiny")
    workload = build_workload(settings, "steady")
    ids = [a.article.id for a in workload.articles]
    recorder = Recorder()
    t0 = 1_000.0
    lite = settings.models[-1].name
    recorder.record(ids[0], True, lite, at=t0 + 1)
    recorder.record(ids[0], True, lite, at=t0 + 2)  # a second terminal result
    recorder.record(ids[1], False, None, at=t0 + 1)
    result = SystemResult(fed=set(ids[:4]), unfinished={ids[2]})  # ids[3] vanished
    log = [
        {
            "at": t0 + 0.5,
            "model": lite,
            "status": 200,
            "ids": [ids[0]],
            "tokens": 500,
            "retry_delay_s": None,
            "quota_id": "",
            "fault": "",
        }
    ]
    m = compute_metrics(
        settings=settings,
        workload=workload,
        system="openai-parallel",
        t0=t0,
        deadline=t0 + settings.horizon_s,
        recorder=recorder,
        result=result,
        server_log=log,
        server_started_at=t0,
        process_cpu_s=0.1,
        peak_rss_mb=50.0,
        bounds={"packed": None, "unpacked": None},
    )
    assert m["lost"] == 1
    assert m["duplicated"] == 1
    assert m["done"] == 1 and m["failed"] == 1 and m["unfinished"] == 1
    assert m["unverified"] == 0
    assert not m["drained"]


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_report_renders_without_the_optional_packages(
    bench_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = report.markdown(
        report.load_run(bench_run),
        report.plots(report.load_run(bench_run), bench_run / "x"),
        "plots/",
    )
    assert "Plots need matplotlib" in text
