"""Redirects are never followed: the API key goes to the configured base URL
and nowhere else, whatever the endpoint answers. A redirect is a
configuration error (the base URL is wrong), reported once, not retried."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import sample_lines, states, write_config, write_jsonl
from redirect_server import LANDING, RecordingServer

from tierbatch.actors.ports import ExtractionRequest, PackAnswer, Provider
from tierbatch.adapters.app.cli import EXIT_PROVIDER_REFUSED, main
from tierbatch.adapters.app.provider_factory import calls_in_flight_limit
from tierbatch.adapters.gemini.genai_provider import GenaiProvider
from tierbatch.adapters.gemini.legacy_provider import LegacyProvider
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.policies.articles import Article
from tierbatch.policies.config import ProviderConfig
from tierbatch.policies.outcomes import AuthFailed

KEY = "redirect-test-KEY-5550123"
STATUSES = (301, 302, 303, 307, 308)

# Where the configured endpoint redirects to. 'localhost' and '127.0.0.1' are
# different origins even on the same port.
LOCATIONS: dict[str, Callable[[RecordingServer, RecordingServer], str]] = {
    "another port": lambda origin, other: f"http://127.0.0.1:{other.port}{LANDING}",
    "another host name": lambda origin, other: f"http://localhost:{origin.port}{LANDING}",
    "another host and port": lambda origin, other: f"http://localhost:{other.port}{LANDING}",
    "the same origin": lambda origin, other: f"{LANDING}?alt=json",
}

PROVIDERS: dict[str, Callable[[ProviderConfig], Provider]] = {
    "genai": lambda config: GenaiProvider(config, api_key=KEY),
    "legacy": lambda config: LegacyProvider(config, api_key=KEY),
}


def extract(provider: Provider) -> PackAnswer:
    request = ExtractionRequest(
        model="gemini-2.5-flash",
        articles=(Article(id="a1", title="t", text="Angela Merkel met Emmanuel Macron."),),
        timeout_s=5.0,
        est_input_tokens=50,
    )

    async def go() -> PackAnswer:
        try:
            return await provider.extract(request)
        finally:
            await provider.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("where", sorted(LOCATIONS))
@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_api_key_never_follows_redirect_to_another_origin(
    kind: str, status: int, where: str
) -> None:
    with RecordingServer() as origin, RecordingServer() as other:
        origin.status = status
        origin.location = LOCATIONS[where](origin, other)
        answer = extract(PROVIDERS[kind](ProviderConfig(base_url=origin.base_url)))
        at_origin = origin.requests()
        elsewhere = other.requests()
    calls = [s for s in at_origin if not s.target.startswith("/landing")]
    landed = [s for s in at_origin if s.target.startswith("/landing")] + elsewhere
    assert len(calls) == 1, "one request, no retry"
    assert KEY in calls[0].text(), "the configured endpoint did get the key"
    assert all(KEY not in s.text() for s in landed)
    assert landed == [], "no redirect is followed"
    assert isinstance(answer.outcome, AuthFailed), answer.outcome
    assert answer.outcome.status == status
    assert "redirect" in answer.outcome.message
    assert "provider.base_url" in answer.outcome.message
    assert KEY not in repr(answer)


@pytest.mark.parametrize("status", [300, 307])
@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_redirect_without_a_location_is_refused_too(kind: str, status: int) -> None:
    with RecordingServer() as origin:
        origin.status = status
        answer = extract(PROVIDERS[kind](ProviderConfig(base_url=origin.base_url)))
        calls = origin.requests()
    assert len(calls) == 1
    assert isinstance(answer.outcome, AuthFailed), answer.outcome
    assert answer.outcome.status == status
    assert "an unreadable address" in answer.outcome.message


def test_run_against_a_redirecting_endpoint_stops_without_a_retry_storm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with RecordingServer() as origin, RecordingServer() as other:
        origin.status = 307
        origin.location = f"http://localhost:{other.port}{LANDING}"
        config = write_config(
            tmp_path / "c.toml", base_url=origin.base_url, extractors=1, max_packs=1
        )
        articles = write_jsonl(tmp_path / "in.jsonl", sample_lines(120))
        db = tmp_path / "r.sqlite"
        out, err = io.StringIO(), io.StringIO()
        code = main(
            ["run", str(articles), "--db", str(db), "--config", str(config), "--no-progress"],
            stdout=out,
            stderr=err,
        )
        calls = origin.requests()
        elsewhere = other.requests()
    logs = capfd.readouterr()
    assert code == EXIT_PROVIDER_REFUSED, err.getvalue()
    assert "redirect" in err.getvalue()
    # At most what was already in flight when the first answer came back.
    assert 1 <= len(calls) <= calls_in_flight_limit(load_config(config)) < 120 // 4
    assert elsewhere == []
    assert states(db) == {"queued": 120}
    for text in (out.getvalue(), err.getvalue(), logs.out, logs.err):
        assert KEY not in text
