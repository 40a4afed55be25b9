"""The legacy google-generativeai adapter: the same contract as the default
adapter against the local fake Gemini server, plus what only it has."""

from __future__ import annotations

import sys

import pytest
from provider_contract import KEY, ProviderContract
from structlog.testing import capture_logs

from tierbatch.actors.ports import Provider
from tierbatch.adapters.gemini import legacy_provider
from tierbatch.adapters.gemini.legacy_provider import LegacyExtraMissingError, LegacyProvider
from tierbatch.policies.config import ProviderConfig


class TestLegacyProvider(ProviderContract):
    kind = "legacy"

    def make(self, config: ProviderConfig, api_key: str | None = KEY) -> Provider:
        return LegacyProvider(config, api_key=api_key, max_workers=8)

    def make_pooled(self, config: ProviderConfig, calls_at_once: int) -> Provider:
        return LegacyProvider(config, api_key=KEY, max_workers=calls_at_once)


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "google.generativeai", None)
    with pytest.raises(LegacyExtraMissingError, match=r"pip install 'tierbatch\[legacy\]'"):
        LegacyProvider(ProviderConfig(), api_key=KEY)


def test_end_of_life_notice_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(legacy_provider, "_notice_logged", False)
    with capture_logs() as logs:
        LegacyProvider(ProviderConfig(base_url="http://127.0.0.1:9"), api_key=KEY)
        LegacyProvider(ProviderConfig(base_url="http://127.0.0.1:9"), api_key=KEY)
    notices = [e for e in logs if "end of life" in e["event"]]
    assert len(notices) == 1
    assert notices[0]["end_of_life"] == "2025-11-30"
    assert notices[0]["log_level"] == "warning"
