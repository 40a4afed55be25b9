"""The daemon with a tier on the Batch API, as a user runs it: a child
process against the local fake server (on a test clock, so a job's
turnaround passes when the test says so). Killed outright once its job is
recorded and restarted, it resumes polling the same job and never submits
it twice; every article ends exactly once, at the batch price."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from cli_helpers import (
    TEST_KEY,
    DaemonProcess,
    child_env,
    query,
    sample_ids,
    sample_lines,
    states,
    wait_until,
    write_config,
    write_jsonl,
)
from test_daemon import enqueue, run_cli
from test_fake_gemini_batch import ManualClock

from tierbatch.adapters.simulation.batch_emulator import BatchSettings
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig

TURNAROUND_S = 3600.0


def batch_config(path: Path, base_url: str) -> Path:
    """The shared two-tier config, its (only used) hot tier on the Batch API."""
    write_config(path, base_url=base_url)
    text = path.read_text(encoding="utf-8")
    text = text.replace('name = "hot"\n', 'name = "hot"\nmode = "batch"\n', 1)
    text += "\n[batch]\npoll_interval_s = 0.1\ncollect_s = 0.0\nmax_requests_per_job = 100\n"
    path.write_text(text, encoding="utf-8")
    return path


def creates(server: FakeGeminiServer) -> int:
    return sum(r.method == "batches.create" for r in server.log)


def test_daemon_killed_mid_poll_resumes_the_same_job_without_a_second_submit(
    tmp_path: Path,
) -> None:
    n = 20
    clock = ManualClock()
    settings = BatchSettings(pending_s=60.0, turnaround_s=TURNAROUND_S)
    with FakeGeminiServer(FakeGeminiConfig(batch=settings), clock=clock) as server:
        config = batch_config(tmp_path / "c.toml", server.base_url)
        db = tmp_path / "q.sqlite"
        enqueue(db, sample_lines(n))
        args = ["daemon", "--db", str(db), "--config", str(config), "--lease-s", "2"]
        with DaemonProcess(args, child_env()) as first:
            first.wait_for_event("batch job recorded")
            wait_until(
                lambda: any(r.method == "batches.get" for r in server.log), 30, "a first poll"
            )
            first.signal(signal.SIGKILL)
            first.wait(30)
        assert creates(server) == 1
        (job,) = query(db, "SELECT phase, name, articles FROM batch_jobs")
        assert job[0] == "submitted" and job[1].startswith("batches/") and job[2] == n
        assert states(db) == {"leased": n}
        clock.advance(TURNAROUND_S)
        with DaemonProcess(args, child_env()) as second:
            second.wait_for_event("daemon ready")
            wait_until(lambda: states(db).get("done", 0) == n, 60, "every article done")
            second.signal(signal.SIGTERM)
            assert second.wait(60) == 0, second.stderr()
            settled = second.wait_for_event("batch job settled")
        assert creates(server) == 1  # the restart resumed the job: no second submit
        assert not any(r.method == "generateContent" for r in server.log)
    assert settled["job"] == job[1]
    rows = query(db, "SELECT article_id, status, model, cost_usd FROM results")
    assert sorted(r[0] for r in rows) == sorted(sample_ids(n))
    assert all(r[1] == "done" and r[2] == "m-pro" for r in rows)
    (cost, interactive) = query(
        db, "SELECT cost_usd, interactive_cost_usd FROM batch_jobs WHERE phase = 'settled'"
    )[0]
    assert cost > 0 and abs(cost * 2 - interactive) < 1e-12
    assert abs(sum(r[3] for r in rows) - cost) < 1e-9
    code, out, _ = run_cli("status", "--db", str(db))
    assert code == 0
    assert "batch jobs: 0 in flight" in out
    assert "saved" in out


def auto_config(path: Path, base_url: str) -> Path:
    """The hot tier ``auto`` with a 10 s deadline, every model of its chain
    at 2 requests a minute: the interactive quota cannot meet it."""
    write_config(path, base_url=base_url)
    text = path.read_text(encoding="utf-8")
    text = text.replace('name = "hot"\n', 'name = "hot"\nmode = "auto"\nmax_latency_s = 10.0\n', 1)
    text = text.replace("rpm = 6000", "rpm = 2").replace("window_s = 2.0", "window_s = 60.0")
    text += "\n[batch]\npoll_interval_s = 0.1\ncollect_s = 0.2\n"
    path.write_text(text, encoding="utf-8")
    return path


def test_auto_tier_sends_what_the_quota_cannot_finish_in_time_to_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 30
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    settings = BatchSettings(pending_s=0.1, turnaround_s=0.5)
    with FakeGeminiServer(FakeGeminiConfig(batch=settings)) as server:
        config = auto_config(tmp_path / "c.toml", server.base_url)
        articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(n))
        db = tmp_path / "r.sqlite"
        code, out, err = run_cli(
            "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
        )
        log = server.log
    assert code == 0, err
    assert creates_in(log) >= 1
    interactive = [r for r in log if r.method == "generateContent"]
    assert len(interactive) <= 2  # at most the quota's first window went interactive
    rows = query(db, "SELECT status, model FROM results")
    assert len(rows) == n and all(status == "done" for status, _ in rows)
    assert "batch jobs: 0 in flight" in out and "saved $" in out
    assert "30 done, 0 failed" in out


def creates_in(log: list) -> int:  # type: ignore[type-arg]
    return sum(r.method == "batches.create" for r in log)
