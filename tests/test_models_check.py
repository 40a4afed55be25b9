"""The models check: ``tierbatch models`` and its exit codes, and the check
``run`` and ``daemon`` make at start (``--no-check`` skips it) against the
fake Gemini server; plus what a start decides from a report."""

from __future__ import annotations

import io
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import (
    TEST_KEY,
    DaemonProcess,
    child_env,
    query,
    sample_lines,
    states,
    wait_until,
    write_config,
    write_jsonl,
)

from tierbatch.actors.ports import ModelInfo
from tierbatch.adapters.app.cli import (
    EXIT_FAILED,
    EXIT_MODEL_MISSING,
    EXIT_OK,
    EXIT_PROVIDER_REFUSED,
    main,
)
from tierbatch.adapters.app.model_check import (
    ModelLookup,
    ModelReport,
    StartVerdict,
    decide_start,
)
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig, ServedRequest
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.policies.model_check import assess_coverage
from tierbatch.policies.outcomes import AuthFailed, TimedOut


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    return TEST_KEY


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def server_factory() -> Iterator[list[FakeGeminiServer]]:
    started: list[FakeGeminiServer] = []
    yield started
    for server in started:
        server.stop()


def serve(started: list[FakeGeminiServer], **config: object) -> FakeGeminiServer:
    server = FakeGeminiServer(FakeGeminiConfig(**config))  # type: ignore[arg-type]
    server.start()
    started.append(server)
    return server


def lookups(log: list[ServedRequest]) -> list[tuple[str, int]]:
    return sorted((r.model, r.status) for r in log if r.method == "models.get")


def generated(log: list[ServedRequest]) -> list[tuple[str, int]]:
    return [(r.model, r.status) for r in log if r.method == "generateContent"]


# --------------------------------------------------------------------------
# tierbatch models


def test_models_lists_every_configured_model(
    key: str, tmp_path: Path, server_factory: list[FakeGeminiServer]
) -> None:
    server = serve(server_factory, without_batch=frozenset({"m-lite"}))
    config = write_config(tmp_path / "c.toml", base_url=server.base_url)
    code, out, err = run_cli("models", "--config", str(config))
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[0] == f"provider: google-genai at {server.base_url} (v1beta)"
    assert lines[1].split()[:3] == ["model", "status", "input"]
    assert lines[2].split()[:5] == ["m-lite", "ok", "1,048,576", "65,536", "no"]
    assert lines[2].endswith("hot (fallback), cold, global fallback")
    assert lines[3].split() == ["m-pro", "ok", "1,048,576", "65,536", "yes", "hot"]
    assert len(lines) == 4
    assert lookups(server.log) == [("m-lite", 200), ("m-pro", 200)]

    code, out, _ = run_cli("models", "--config", str(config), "--json")
    assert code == EXIT_OK
    report = json.loads(out)
    assert [m["model"] for m in report["models"]] == ["m-lite", "m-pro"]
    assert [m["supports_batch"] for m in report["models"]] == [False, True]
    assert report["missing"] == [] and report["stranded_tiers"] == []
    assert key not in out + err


def test_models_exits_8_naming_a_missing_model(
    key: str, tmp_path: Path, server_factory: list[FakeGeminiServer]
) -> None:
    server = serve(server_factory, retired=frozenset({"m-pro"}))
    config = write_config(tmp_path / "c.toml", base_url=server.base_url)
    code, out, _ = run_cli("models", "--config", str(config))
    assert code == EXIT_MODEL_MISSING
    assert ["m-pro", "MISSING", "-", "-", "-", "hot"] in [line.split() for line in out.splitlines()]
    assert "model m-pro is not found at the provider (HTTP 404" in out
    assert "tier hot would use m-lite" in out
    assert lookups(server.log) == [("m-lite", 200), ("m-pro", 404)]


def test_models_exits_4_when_the_key_is_refused(
    key: str, tmp_path: Path, server_factory: list[FakeGeminiServer]
) -> None:
    server = serve(server_factory, valid_keys=frozenset({"the-right-key"}))
    config = write_config(tmp_path / "c.toml", base_url=server.base_url)
    code, out, err = run_cli("models", "--config", str(config))
    assert code == EXIT_PROVIDER_REFUSED
    assert "refused the key" in err
    assert key not in out + err


def test_models_exits_1_when_a_model_cannot_be_checked(key: str, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        base_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = write_config(tmp_path / "c.toml", base_url=base_url)
        code, out, _ = run_cli("models", "--config", str(config), "--timeout", "0.3")
    assert code == EXIT_FAILED
    assert "could not check m-pro: no answer within" in out


def test_models_on_the_simulated_provider_answers_from_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml")  # provider.kind = simulated
    code, out, _ = run_cli("models", "--config", str(config))
    assert code == EXIT_OK
    assert out.startswith("provider: simulated")
    assert "m-pro" in out and "MISSING" not in out


def test_models_refuses_a_bad_timeout(tmp_path: Path) -> None:
    code, _, err = run_cli("models", "--timeout", "0")
    assert code == 2 and "--timeout" in err


# --------------------------------------------------------------------------
# The check at start of run and daemon


def test_run_routes_around_a_missing_primary_from_the_start(
    key: str, tmp_path: Path, server_factory: list[FakeGeminiServer]
) -> None:
    server = serve(server_factory, retired=frozenset({"m-pro"}))
    config = write_config(tmp_path / "c.toml", base_url=server.base_url)
    articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(12))
    db = tmp_path / "r.sqlite"
    code, _, err = run_cli(
        "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
    )
    assert code == EXIT_OK, err
    assert "warning: model m-pro is not found at the provider" in err
    assert "tier hot uses m-lite" in err
    assert lookups(server.log) == [("m-lite", 200), ("m-pro", 404)]
    # Not one attempt was spent on the missing model.
    assert generated(server.log) and {m for m, _ in generated(server.log)} == {"m-lite"}
    assert states(db) == {"done": 12}
    assert query(db, "SELECT DISTINCT model FROM results") == [("m-lite",)]


def test_run_with_no_check_spends_attempts_on_the_missing_model(
    key: str, tmp_path: Path, server_factory: list[FakeGeminiServer]
) -> None:
    server = serve(server_factory, retired=frozenset({"m-pro"}))
    config = write_config(tmp_path / "c.toml", base_url=server.base_url)
    articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(12))
    db = tmp_path / "r.sqlite"
    code, _, err = run_cli(
        "run",
        str(articles),
        "--db",
        str(db),
        "--config",
        str(config),
        "--no-progress",
        "--no-check",
    )
    assert code == EXIT_OK, err
    assert lookups(server.log) == []
    assert ("m-pro", 404) in generated(server.log)
    assert states(db) == {"done": 12}


def test_run_stops_before_leasing_when_a_tier_has_no_model_left(
    key: str, tmp_path: Path, server_factory: list[FakeGeminiServer]
) -> None:
    # m-lite is the cold tier's only model (and the global fallback).
    server = serve(server_factory, retired=frozenset({"m-lite"}))
    config = write_config(tmp_path / "c.toml", base_url=server.base_url)
    articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(12))
    db = tmp_path / "r.sqlite"
    code, _, err = run_cli(
        "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
    )
    assert code == EXIT_MODEL_MISSING
    assert "tier cold (m-lite all missing)" in err
    assert "Nothing was leased: 12 article(s) stay queued" in err
    assert generated(server.log) == []
    assert states(db) == {"queued": 12}
    assert query(db, "SELECT COUNT(*) FROM results") == [(0,)]
    assert query(db, "SELECT MAX(attempts) FROM articles") == [(0,)]


def test_run_stops_with_exit_4_when_the_check_is_refused(
    key: str, tmp_path: Path, server_factory: list[FakeGeminiServer]
) -> None:
    server = serve(server_factory, valid_keys=frozenset({"the-right-key"}))
    config = write_config(tmp_path / "c.toml", base_url=server.base_url)
    articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(5))
    db = tmp_path / "r.sqlite"
    code, out, err = run_cli(
        "run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"
    )
    assert code == EXIT_PROVIDER_REFUSED
    assert "refused the configuration" in err and "5 article(s) stay queued" in err
    assert generated(server.log) == []
    assert states(db) == {"queued": 5}
    assert key not in out + err


def test_daemon_stops_at_start_when_a_tier_has_no_model_left(
    key: str, tmp_path: Path, server_factory: list[FakeGeminiServer]
) -> None:
    server = serve(server_factory, retired=frozenset({"m-lite"}))
    config = write_config(tmp_path / "c.toml", base_url=server.base_url)
    db = tmp_path / "d.sqlite"
    code, _, _ = run_cli(
        "enqueue", str(write_jsonl(tmp_path / "in.jsonl", sample_lines(6))), "--db", str(db)
    )
    assert code == EXIT_OK
    code, _, err = run_cli("daemon", "--db", str(db), "--config", str(config), "--no-progress")
    assert code == EXIT_MODEL_MISSING
    assert "tier cold" in err
    assert generated(server.log) == []
    assert states(db) == {"queued": 6}


def test_daemon_checks_at_start_and_no_check_skips_it(
    tmp_path: Path, server_factory: list[FakeGeminiServer]
) -> None:
    server = serve(server_factory, retired=frozenset({"m-pro"}))
    config = write_config(tmp_path / "c.toml", base_url=server.base_url)
    db = tmp_path / "d.sqlite"
    code, _, _ = run_cli(
        "enqueue", str(write_jsonl(tmp_path / "in.jsonl", sample_lines(8))), "--db", str(db)
    )
    assert code == EXIT_OK
    args = ["daemon", "--db", str(db), "--config", str(config)]
    with DaemonProcess(args, child_env()) as daemon:
        checked = daemon.wait_for_event("models checked")
        daemon.wait_for_event("daemon ready")
        wait_until(lambda: states(db).get("done", 0) == 8, 30, "every article done")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == EXIT_OK, daemon.stderr()
    assert checked["missing"] == ["m-pro"] and checked["found"] == ["m-lite"]
    assert "warning: model m-pro is not found" in daemon.stderr()
    assert {m for m, _ in generated(server.log)} == {"m-lite"}

    before = len(server.log)
    with DaemonProcess([*args, "--no-check"], child_env()) as daemon:
        daemon.wait_for_event("daemon ready")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == EXIT_OK, daemon.stderr()
    assert not any(e["event"] == "models checked" for e in daemon.events)
    assert lookups(server.log[before:]) == []


# --------------------------------------------------------------------------
# What a start decides from a report


def report(*found: str, missing: tuple[str, ...] = ()) -> ModelReport:
    config = load_config(None)
    entries = [ModelLookup(m, ModelInfo(m, input_token_limit=10)) for m in found]
    entries += [ModelLookup(m, None) for m in missing]
    coverage = assess_coverage(config.tiers, config.global_fallback, missing)
    return ModelReport(tuple(entries), coverage)


def test_a_failed_lookup_only_warns() -> None:
    config = load_config(None)
    err = io.StringIO()
    base = report("gemini-2.5-pro", "gemini-2.5-flash-lite")
    failed = ModelLookup("gemini-2.5-flash", None, TimedOut(0.3))
    decision = decide_start(ModelReport((*base.lookups, failed), base.coverage), config, err)
    assert decision.verdict is StartVerdict.GO and decision.unavailable == {}
    assert "could not check model gemini-2.5-flash (no answer within 0.3 s)" in err.getvalue()
    # the configured 1 048 576 input tokens are above what these models take (10)
    assert "is above the provider's input token limit of 10" in err.getvalue()


def test_a_refusal_wins_over_missing_models() -> None:
    config = load_config(None)
    refused = ModelLookup("gemini-2.5-flash", None, AuthFailed(403, "no"))
    base = report("gemini-2.5-flash-lite", missing=("gemini-2.5-pro",))
    decision = decide_start(
        ModelReport((*base.lookups, refused), base.coverage), config, io.StringIO()
    )
    assert decision.verdict is StartVerdict.REFUSED and decision.message == "no"


def test_missing_models_are_marked_unavailable() -> None:
    config = load_config(None)
    decision = decide_start(
        report("gemini-2.5-flash", "gemini-2.5-flash-lite", missing=("gemini-2.5-pro",)),
        config,
        io.StringIO(),
    )
    assert decision.verdict is StartVerdict.GO
    assert list(decision.unavailable) == ["gemini-2.5-pro"]
