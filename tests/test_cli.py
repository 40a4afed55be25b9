"""The ``tierbatch`` command line, end to end: run on the shipped sample and
the simulated provider, bad input lines, exit codes, config check, status,
enqueue, and a provider that refuses the key."""

from __future__ import annotations

import io
import json
import re
import signal
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
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
    tierbatch_command,
    wait_until,
    write_config,
    write_jsonl,
)

from tierbatch.actors.clock import Clock, ScaledClock
from tierbatch.adapters.app.cli import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROVIDER_REFUSED,
    EXIT_REJECTED,
    EXIT_USAGE,
    main,
)
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.adapters.storage.snapshot_file import decode
from tierbatch.policies.config import parse_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    return monkeypatch


def run_cli(*argv: str, clock: Clock | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, clock=clock)
    return code, out.getvalue(), err.getvalue()


DEMO_SPEED = 30.0
"""The demo's minute of quota in two seconds: the README's main-job command
runs about a minute on the system clock."""


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, str]]:
    """The README's main-job command, in-process, on a fresh database (on a
    scaled clock: the demo's quotas make it take a minute otherwise)."""
    db = tmp_path_factory.mktemp("demo") / "tierbatch-demo.sqlite"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GEMINI_API_KEY", raising=False)
        mp.delenv("GOOGLE_API_KEY", raising=False)
        code, out, _ = run_cli(
            "run", "--sample", "--db", str(db), "--no-progress", clock=ScaledClock(DEMO_SPEED)
        )
    yield db, code, out


def test_run_sample_processes_every_article_once_and_prints_summary(
    sample_run: tuple[Path, int, str],
) -> None:
    db, code, out = sample_run
    assert code == EXIT_OK, out
    lines = out.splitlines()
    assert lines[0].startswith("provider: simulated (no API key set in GEMINI_API_KEY")
    assert "results are synthetic" in lines[0]
    ids = sample_ids()
    assert "input the shipped sample (replayed: " in out
    assert f"{len(ids)} article(s) queued" in out
    assert f"{len(ids)} article(s) finished" in out
    assert "per tier" in out and "per model" in out
    assert "grounding per tier, model and pack size" in out
    # The summary repeats which provider ran.
    assert out.count("results are synthetic") == 2
    rows = query(db, "SELECT article_id, COUNT(*) FROM results GROUP BY article_id")
    assert {article_id for article_id, _ in rows} == set(ids)
    assert all(count == 1 for _, count in rows)
    assert states(db) == {"done": len(ids)}
    assert Path(f"{db}.quota.msgpack").is_file()


def test_the_demo_shows_plan_fallbacks_a_429_a_learnt_limit_and_the_bound(
    sample_run: tuple[Path, int, str],
) -> None:
    """Without --config the sample runs under the demo's tight quotas: the
    plan shares the models out, hot and warm overflow onto their fallbacks,
    the simulated provider's true flash limit (10, configured 20) gives a
    429, a cooldown and a learnt limit, and the summary ends with the bound."""
    db, code, out = sample_run
    assert code == EXIT_OK, out
    assert "(enforcing gemini-2.5-flash rpm 10)" in out.splitlines()[0]
    assert "plan: hot: " in out and "plan: cold: " in out
    assert "plan: with these quotas this backlog takes " in out
    primary = {"hot": "gemini-2.5-pro", "warm": "gemini-2.5-flash", "cold": "gemini-2.5-flash-lite"}
    by_tier: dict[str, set[str]] = {}
    fallbacks = 0
    for tier, model in query(db, "SELECT tier, model FROM results WHERE status = 'done'"):
        by_tier.setdefault(tier, set()).add(model)
        fallbacks += model != primary[tier]
    assert set(by_tier) == {"hot", "warm", "cold"}
    # pro admits 30 of hot's 40 requests in the two windows the bound
    # allows: hot overflows onto its fallbacks; cold has only flash-lite.
    assert fallbacks > 0 and len(by_tier["hot"]) > 1
    assert by_tier["cold"] == {"gemini-2.5-flash-lite"}
    state = decode(Path(f"{db}.quota.msgpack").read_bytes())
    flash = state["models"]["gemini-2.5-flash"]
    assert flash["counters"]["rate_limited"] >= 1
    assert flash["counters"]["cooldown_s"] > 0
    assert flash["estimate"]["rpm"] < 20
    assert (
        "learnt from the provider: " in out and "gemini-2.5-flash: rpm configured 20, learnt" in out
    )
    last = out.rstrip().splitlines()[-1]
    assert re.fullmatch(
        r"bound: with the quotas at the start, this backlog's last request could go after "
        r"60\.0 s at the earliest \(.*\); the run took \d+\.\d s: \d+% of the bound",
        last,
    ), last


def test_status_reads_counts_and_quota(sample_run: tuple[Path, int, str]) -> None:
    db, _, _ = sample_run
    code, out, _ = run_cli("status", "--db", str(db), "--json")
    assert code == EXIT_OK
    status = json.loads(out)
    n = len(sample_ids())
    assert status["states"] == {"queued": 0, "leased": 0, "done": n, "failed": 0}
    assert sum(g["count"] for g in status["results"] if g["status"] == "done") == n
    assert status["rejects"] == 0
    assert status["snapshot_problem"] is None
    used = {q["model"]: q["requests_today"] for q in status["quota"]}
    assert sum(used.values()) > 0
    # The fakes name only what is in each article: every entity is grounded.
    assert sum(g["articles"] for g in status["grounding"]) == n
    assert all(g["cross_article"] == g["ungrounded"] == 0 for g in status["grounding"])
    assert all(g["grounded"] > 0 for g in status["grounding"])
    code, text, _ = run_cli("status", "--db", str(db))
    assert code == EXIT_OK
    assert f"{n} done" in text and "today / rpd" in text
    assert "grounding: entities checked against their articles" in text


def test_status_does_not_wait_for_a_writer(sample_run: tuple[Path, int, str]) -> None:
    db, _, _ = sample_run
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
        code, out, _ = run_cli("status", "--db", str(db), "--json")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert code == EXIT_OK
    assert json.loads(out)["states"]["done"] == len(sample_ids())


def test_status_of_missing_database_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run_cli("status", "--db", str(tmp_path / "nope.sqlite"))
    assert code == EXIT_USAGE
    assert "no such database" in err


def test_console_script_runs_a_file(tmp_path: Path) -> None:
    articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(30))
    db = tmp_path / "out.sqlite"
    done = subprocess.run(
        [*tierbatch_command(), "run", str(articles), "--db", str(db), "--log-json"],
        capture_output=True,
        check=False,
        text=True,
        env=child_env(key=None),
        timeout=120,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.startswith("provider: simulated")
    assert "30 article(s) finished" in done.stdout
    assert states(db) == {"done": 30}
    # Outside a terminal, progress is a structured log line, not a display.
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "progress" and e["finished"] == 30 for e in events)


BAD_LINES = [
    ("not json", "not JSON"),
    ('["an", "array"]', "not a JSON object"),
    ('{"text": "no id here"}', "missing field 'id'"),
    ('{"id": "no-text"}', "missing field 'text'"),
    ('{"id": true, "text": "boolean id"}', "field 'id': must be a string or an integer"),
    ('{"id": "num-text", "text": 42}', "field 'text': must be a string"),
    ('{"id": "bad-date", "text": "t", "published_at": "yesterday"}', "not ISO 8601"),
    ('{"id": "bad-cluster", "text": "t", "cluster_id": [1]}', "field 'cluster_id'"),
    ('{"id": "bad-title", "text": "t", "title": 7}', "field 'title': must be a string"),
]


def test_bad_input_lines_are_rejected_with_line_numbers(
    no_key: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    good = sample_lines(6)
    duplicate = good[0]
    oversized = json.dumps({"id": "huge", "text": "x" * 1_000_100})
    lines = [good[0], good[1], *(line for line, _ in BAD_LINES), good[2], duplicate, "", good[3]]
    lines += [oversized, good[4], good[5]]
    path = tmp_path / "bad.jsonl"
    with path.open("wb") as fh:
        for line in lines:
            fh.write(line.encode() + b"\n")
        fh.write(b'{"id": "latin1", "text": "caf\xe9"}\n')
    code, out, _ = run_cli("run", str(path), "--db", str(tmp_path / "r.sqlite"), "--no-progress")
    assert code == EXIT_REJECTED, out
    db = tmp_path / "r.sqlite"
    rejects = query(db, "SELECT line_no, reason FROM rejects ORDER BY line_no")
    expected = [(3 + i, reason) for i, (_, reason) in enumerate(BAD_LINES)]
    third_good = 3 + len(BAD_LINES)
    expected.append((third_good + 1, "duplicate id"))
    expected.append((third_good + 4, "over the 1000000 limit"))
    expected.append((len(lines) + 1, "not UTF-8"))
    assert [line for line, _ in rejects] == [line for line, _ in expected]
    for (_, reason), (_, want) in zip(rejects, expected, strict=True):
        assert want in reason
    assert f"{len(rejects)} line(s) rejected" in out
    assert f"{len(rejects)} input line(s) rejected" in out
    # Every good line was processed, exactly once.
    good_ids = {json.loads(line)["id"] for line in good}
    assert {r[0] for r in query(db, "SELECT article_id FROM results")} == good_ids
    assert states(db) == {"done": len(good_ids)}


# Every class of bad line, with what its reject reason must name.
EVERY_BAD_LINE: list[tuple[bytes, str]] = [
    (b"not json", "not JSON"),
    (b'["an", "array"]', "not a JSON object"),
    (b'{"text": "no id"}', "missing field 'id'"),
    (b'{"id": "no-text"}', "missing field 'text'"),
    (b'{"id": {"a": 1}, "text": "t"}', "field 'id': must be a string or an integer"),
    (b'{"id": "t-num", "text": 42}', "field 'text': must be a string"),
    (b'{"id": "bad-url", "text": "t", "url": "http://[::1/x"}', "field 'url': not a valid URL"),
    (b'{"id": "bad-dom", "text": "t", "domain": "http://[::1"}', "field 'domain'"),
    (b'{"id": "bad-date", "text": "t", "published_at": "yesterday"}', "field 'published_at'"),
    (
        b'{"id": "early", "text": "t", "published_at": "0001-01-01T00:00:00+01:00"}',
        "field 'published_at': out of range",
    ),
    (b'{"id": "nan", "text": "t", "score": NaN}', "field 'score'"),
    (b'{"id": ' + b"7" * 5000 + b', "text": "t"}', "field 'id': an integer of 5000 digits"),
    (b'{"id": "sur", "text": "\\ud83d"}', "field 'text': value contains an unpaired surrogate"),
    (
        b'{"id": "deep", "text": "t", "tree": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        "field 'tree': nested more than 64 levels deep",
    ),
    (b'{"id": "latin1", "text": "caf\xe9"}', "not UTF-8"),
    (json.dumps({"id": "huge", "text": "x" * 1_000_100}).encode(), "over the 1000000 limit"),
]


def test_run_rejects_every_class_of_bad_line_naming_the_field(
    no_key: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One bad line never stops ``run``: each is rejected with its line number
    and a reason naming the field, and every good line ends done."""
    good = [line.encode() for line in sample_lines(4)]
    lines = [good[0], *(line for line, _ in EVERY_BAD_LINE), good[1], good[0], good[2], good[3]]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    db = tmp_path / "r.sqlite"
    code, out, err = run_cli("run", str(path), "--db", str(db), "--no-progress")
    assert code == EXIT_REJECTED, out + err
    expected = [(2 + i, reason) for i, (_, reason) in enumerate(EVERY_BAD_LINE)]
    expected.append((len(EVERY_BAD_LINE) + 3, "duplicate id"))
    rejects = query(db, "SELECT line_no, reason FROM rejects ORDER BY line_no")
    assert [n for n, _ in rejects] == [n for n, _ in expected]
    for (_, reason), (_, want) in zip(rejects, expected, strict=True):
        assert want in reason, reason
    assert states(db) == {"done": 4}
    good_ids = {json.loads(line)["id"] for line in good}
    assert {r[0] for r in query(db, "SELECT article_id FROM results")} == good_ids


def test_usage_errors_exit_2(no_key: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert run_cli("run", "--sample")[0] == EXIT_USAGE  # no --db
    code, _, err = run_cli("run", str(tmp_path / "missing.jsonl"), "--db", str(tmp_path / "x.db"))
    assert code == EXIT_USAGE and "no such file" in err
    code, _, err = run_cli("run", "--sample", "--db", str(tmp_path / "no" / "dir" / "x.db"))
    assert code == EXIT_USAGE and "does not exist" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('global_fallback = "nope"\n')
    code, _, err = run_cli("run", "--sample", "--db", str(tmp_path / "x.db"), "--config", str(bad))
    assert code == EXIT_USAGE and "bad.toml" in err


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    for code in range(6):
        assert f"\n  {code}  " in text


def test_config_check_prints_resolved_settings() -> None:
    example = REPO / "examples" / "tierbatch.toml"
    code, out, _ = run_cli("config", "check", str(example))
    assert code == EXIT_OK
    assert parse_config(tomllib.loads(out)) == load_config(example)
    code, out, _ = run_cli("config", "check")
    assert code == EXIT_OK and "gemini-2.5-flash" in out


def test_config_check_names_the_bad_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml")
    text = path.read_text().replace('model = "m-pro"', 'model = "m-prro"')
    text = text.replace("rpm = 6000", "rpm = -1", 1)
    path.write_text(text)
    code, out, err = run_cli("config", "check", str(path))
    assert code == EXIT_USAGE and out == ""
    assert "tiers[0].model: unknown model 'm-prro'" in err
    assert "models.m-pro.rpm: " in err
    code, _, err = run_cli("config", "check", str(tmp_path / "absent.toml"))
    assert code == EXIT_USAGE and "config file not found" in err


def test_enqueue_counts_and_rejects(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    path = write_jsonl(tmp_path / "in.jsonl", [*sample_lines(5), "{broken"])
    code, out, _ = run_cli("enqueue", str(path), "--db", str(db))
    assert code == EXIT_REJECTED
    assert "5 article(s) queued" in out and "1 line(s) rejected" in out
    code, out, _ = run_cli(
        "enqueue", str(write_jsonl(tmp_path / "b.jsonl", sample_lines(7))), "--db", str(db)
    )
    assert code == EXIT_OK
    assert "2 article(s) queued, 5 already in the database" in out
    assert states(db) == {"queued": 7}


def test_provider_refusing_the_key_exits_4_and_keeps_the_queue(
    no_key: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeGeminiConfig(valid_keys=frozenset({"the-right-key"}))
    with FakeGeminiServer(fake) as server:
        no_key.setenv("GEMINI_API_KEY", TEST_KEY)
        config = write_config(tmp_path / "c.toml", base_url=server.base_url)
        articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(12))
        db = tmp_path / "r.sqlite"
        # --no-check: the runtime's own handling of the refusal, not the check's
        # at start (tested in test_models_check.py).
        code, out, err = run_cli(
            "run",
            str(articles),
            "--db",
            str(db),
            "--config",
            str(config),
            "--no-progress",
            "--no-check",
        )
    logs = capsys.readouterr()
    assert code == EXIT_PROVIDER_REFUSED, err
    assert out.startswith(f"provider: google-genai at {server.base_url}")
    assert "refused the configuration" in err and "GEMINI_API_KEY" in err
    assert "12 article(s) stay queued" in err
    assert states(db) == {"queued": 12}
    assert query(db, "SELECT COUNT(*) FROM results") == [(0,)]
    for text in (out, err, logs.out, logs.err):
        assert TEST_KEY not in text


def test_run_stopped_by_a_signal_exits_5_and_leaves_the_rest_queued(tmp_path: Path) -> None:
    with FakeGeminiServer(FakeGeminiConfig(latency_s=0.3)) as server:
        config = write_config(
            tmp_path / "c.toml", base_url=server.base_url, extractors=1, max_packs=1
        )
        articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(60))
        db = tmp_path / "r.sqlite"
        args = ["run", str(articles), "--db", str(db), "--config", str(config), "--log-json"]
        with DaemonProcess([*args, "--drain-timeout", "0"], child_env()) as run:
            run.wait_for_event("daemon ready")
            wait_until(lambda: server.log != [], 30, "the first request")
            run.signal(signal.SIGINT)
            assert run.wait(30) == EXIT_INTERRUPTED, run.stderr()
            out = run.stdout()
    assert "stopped by a signal before the queue was empty" in out
    counts = states(db)
    assert counts.get("leased", 0) == 0
    assert counts["queued"] > 0
    assert counts["queued"] + counts.get("done", 0) == 60


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tierbatch.adapters.app.cli", "--help"],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert "exit codes:" in done.stdout
