"""A whole ``tierbatch run`` against the fake Gemini server, with a
distinctive API key and every kind of trouble the fake can make (429s,
5xx, HTML error pages, unreadable bodies, invalid answers, hangs past the
timeout): the key must appear in no output stream, log line (debug level,
console and JSON), database, snapshot or metrics text."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import sample_lines, write_config, write_jsonl
from prometheus_client import generate_latest

from tierbatch.adapters.app import cli
from tierbatch.adapters.app.metrics import Metrics
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import (
    FakeGeminiConfig,
    FaultRates,
    key_fingerprint,
)
from tierbatch.policies.config import ModelSpec

KEY = "AIzaSy-tierbatch-LEAK-CANARY-8c1f2e90"

FAULTS = FaultRates(
    server_error=0.15,
    hang=0.1,
    malformed_json_text=0.05,
    malformed_body=0.15,
    max_tokens=0.05,
    missing_article=0.05,
)


class _KeptMetrics(Metrics):
    """Metrics that stay reachable after the run, to render their text."""

    made: list[Metrics] = []  # noqa: RUF012 - one test's scratch list

    def __init__(self) -> None:
        super().__init__()
        _KeptMetrics.made.append(self)


@pytest.mark.parametrize("log_format", ["--log-json", "--no-progress"], ids=["json", "console"])
def test_key_never_appears_in_any_output_of_a_whole_run(
    log_format: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setattr(cli, "Metrics", _KeptMetrics)
    _KeptMetrics.made.clear()
    fake = FakeGeminiConfig(
        models={"m-pro": ModelSpec("m-pro", rpm=5, tpm=0, rpd=0)},  # 429s for sure
        window_s=0.5,
        faults=FAULTS,
        hang_s=3.0,
        seed=11,
    )
    with FakeGeminiServer(fake) as server:
        config = write_config(tmp_path / "c.toml", base_url=server.base_url, window_s=0.5)
        config.write_text(
            config.read_text()
            .replace("request_timeout_s = 10.0", "request_timeout_s = 1.0")
            .replace("[quota]\n", "[quota]\nbackoff_max_s = 2.0\n")  # short fault cooldowns
        )
        articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(60))
        db = tmp_path / "r.sqlite"
        code = cli.main(
            [
                "run",
                str(articles),
                "--db",
                str(db),
                "--config",
                str(config),
                "--snapshot",
                str(tmp_path / "quota.msgpack"),
                "--metrics-port",
                "0",
                "--log-level",
                "debug",
                "--stats-interval",
                "0.5",
                log_format,
            ]
        )
        served = server.log
    streams = capfd.readouterr()
    [metrics] = _KeptMetrics.made
    metrics_text = generate_latest(metrics.registry).decode()

    assert code in (cli.EXIT_OK, cli.EXIT_FAILED), streams.err
    assert {s.key_fingerprint for s in served} == {key_fingerprint(KEY)}, "the key was used"
    assert {s.status for s in served} >= {200, 429}, "the run met trouble"
    assert {"hang", "server_error", "malformed_body"} <= {s.fault for s in served}
    assert "provider calls" in streams.err and "gemini answered" in streams.err
    assert "tierbatch_requests" in metrics_text
    for name, text in (("stdout", streams.out), ("stderr", streams.err), ("metrics", metrics_text)):
        assert KEY not in text, name
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert db in files and tmp_path / "quota.msgpack" in files
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path.name
