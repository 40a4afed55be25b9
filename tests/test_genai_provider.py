"""The google-genai adapter against the local fake Gemini server, plus the
provider factory."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from google.genai.models import AsyncModels
from provider_contract import KEY, MODEL, ProviderContract, fake_server, request

from tierbatch.actors.clock import SystemClock
from tierbatch.actors.ports import Provider
from tierbatch.adapters.app.provider_factory import calls_in_flight_limit, make_provider
from tierbatch.adapters.gemini.api_key import MissingApiKeyError
from tierbatch.adapters.gemini.genai_provider import GenaiProvider
from tierbatch.adapters.gemini.legacy_provider import LegacyProvider
from tierbatch.adapters.gemini.origin import InvalidBaseUrlError
from tierbatch.adapters.simulation.simulated import SimulatedProvider
from tierbatch.policies.articles import Article
from tierbatch.policies.config import (
    ComposerConfig,
    Config,
    ModelSpec,
    ProviderConfig,
    ProviderKind,
    RuntimeConfig,
    TierSpec,
)
from tierbatch.policies.outcomes import Succeeded


class TestGenaiProvider(ProviderContract):
    kind = "genai"

    def make(self, config: ProviderConfig, api_key: str | None = KEY) -> Provider:
        return GenaiProvider(config, api_key=api_key)

    def make_pooled(self, config: ProviderConfig, calls_at_once: int) -> Provider:
        return GenaiProvider(config, api_key=KEY, max_connections=calls_at_once)


def test_api_version_from_config() -> None:
    with fake_server() as server:
        provider = GenaiProvider(
            ProviderConfig(base_url=server.base_url, api_version="v1"), api_key=KEY
        )

        async def go() -> None:
            try:
                await provider.extract(request())
            finally:
                await provider.aclose()

        asyncio.run(go())
        assert [s.api_version for s in server.log] == ["v1"]


def test_one_client_per_event_loop() -> None:
    """Pooled connections belong to their loop: a second loop must still work."""
    with fake_server() as server:
        provider = GenaiProvider(ProviderConfig(base_url=server.base_url), api_key=KEY)
        first = asyncio.run(provider.extract(request()))
        second = asyncio.run(provider.extract(request()))
        asyncio.run(provider.aclose())
    assert isinstance(first.outcome, Succeeded)
    assert isinstance(second.outcome, Succeeded)


def test_connections_are_split_over_small_pools_and_a_quiet_provider_keeps_one() -> None:
    """An HTTP pool scans every idle connection per request and per response
    (a third of a call's CPU with one pool of hundreds): calls spread over
    pools of at most ``POOL_SHARD_CONNECTIONS``, opened only as calls pile up."""
    from tierbatch.adapters.gemini.genai_provider import POOL_SHARD_CONNECTIONS

    at_once = 2 * POOL_SHARD_CONNECTIONS + 3
    with fake_server(latency_s=0.3) as server:
        provider = GenaiProvider(
            ProviderConfig(base_url=server.base_url), api_key=KEY, max_connections=at_once
        )

        async def go() -> tuple[list[Any], list[int], list[int]]:
            try:
                for _ in range(3):  # one at a time: one pool does
                    await provider.extract(request(timeout_s=10.0))
                quiet = [len(shards) for shards in provider._clients.values()]
                articles = [
                    Article(id=f"s{i}", title="Merkel in Paris", text="Angela Merkel met Macron.")
                    for i in range(at_once)
                ]
                calls = [provider.extract(request((a,), timeout_s=10.0)) for a in articles]
                answers = list(await asyncio.gather(*calls))
                (shards,) = provider._clients.values()
                return answers, quiet, [e.calls for e in shards]
            finally:
                await provider.aclose()

        answers, quiet, left = asyncio.run(go())
    assert all(isinstance(a.outcome, Succeeded) for a in answers)
    assert quiet == [1]
    assert len(left) == 3 and left == [0, 0, 0]  # every call counted back
    sent = {e.article_ids[0] for e in server.log if e.article_ids}
    assert len(sent - {"a1"}) == at_once


def test_pool_shards_share_one_ssl_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building an SSL context costs ~25 ms of CPU, and the SDK built three
    per client (one client per pool shard): a provider now builds one."""
    import ssl

    from tierbatch.adapters.gemini import genai_provider

    built: list[object] = []
    original = ssl.SSLContext.__new__

    def counting(cls: type, *args: Any, **kwargs: Any) -> Any:
        built.append(cls)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "__new__", counting)
    provider = GenaiProvider(ProviderConfig(base_url="http://127.0.0.1:9"), api_key=KEY)

    async def go() -> int:
        shards = [provider._new_client(max_connections=8) for _ in range(4)]
        for shard in shards:
            await genai_provider._close(shard)
        return len(shards)

    assert asyncio.run(go()) == 4
    assert len(built) == 1


def test_the_request_config_is_built_once_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call of a model gets the same ``GenerateContentConfig`` (it used
    to be built anew for every call): a spy on the SDK sees one per model."""
    seen: dict[str, set[int]] = {}
    original = AsyncModels.generate_content

    async def spy(self: AsyncModels, *, model: str, contents: Any, config: Any = None) -> Any:
        seen.setdefault(model, set()).add(id(config))
        return await original(self, model=model, contents=contents, config=config)

    monkeypatch.setattr(AsyncModels, "generate_content", spy)
    with fake_server() as server:
        provider = GenaiProvider(ProviderConfig(base_url=server.base_url), api_key=KEY)

        async def go() -> list[object]:
            try:
                return [
                    (await provider.extract(request(model=model))).outcome
                    for model in (MODEL, "gemini-2.5-pro") * 3
                ]
            finally:
                await provider.aclose()

        outcomes = asyncio.run(go())
    assert all(isinstance(outcome, Succeeded) for outcome in outcomes)
    assert {model: len(ids) for model, ids in seen.items()} == {MODEL: 1, "gemini-2.5-pro": 1}


def config(kind: ProviderKind, base_url: str | None = None) -> Config:
    return Config(
        models={MODEL: ModelSpec(MODEL, rpm=10, tpm=100_000, rpd=100)},
        tiers=(TierSpec("main", 0.0, MODEL),),
        global_fallback=MODEL,
        composer=ComposerConfig(mix={"main": 1}),
        provider=ProviderConfig(kind=kind, base_url=base_url),
    )


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    return monkeypatch


def test_factory_auto_without_key_is_simulated(no_key_env: pytest.MonkeyPatch) -> None:
    provider, description = make_provider(config(ProviderKind.AUTO), SystemClock())
    assert isinstance(provider, SimulatedProvider)
    assert description.startswith("simulated (no API key set")


def test_factory_auto_with_key_is_genai(no_key_env: pytest.MonkeyPatch) -> None:
    no_key_env.setenv("GOOGLE_API_KEY", "env-key")
    provider, description = make_provider(
        config(ProviderKind.AUTO, "http://127.0.0.1:9"), SystemClock()
    )
    assert isinstance(provider, GenaiProvider)
    assert description == "google-genai at http://127.0.0.1:9 (v1beta)"
    asyncio.run(provider.aclose())


def test_factory_explicit_kinds(no_key_env: pytest.MonkeyPatch) -> None:
    for kind in (ProviderKind.GENAI, ProviderKind.LEGACY):
        with pytest.raises(MissingApiKeyError):
            make_provider(config(kind), SystemClock())
    genai_provider, _ = make_provider(config(ProviderKind.GENAI), SystemClock(), api_key="k")
    legacy_provider, description = make_provider(
        config(ProviderKind.LEGACY), SystemClock(), api_key="k"
    )
    assert isinstance(genai_provider, GenaiProvider)
    assert isinstance(legacy_provider, LegacyProvider)
    assert "end of life" in description
    simulated, description = make_provider(
        config(ProviderKind.SIMULATED), SystemClock(), api_key="k"
    )
    assert isinstance(simulated, SimulatedProvider)
    assert description == "simulated (provider.kind = simulated)"
    asyncio.run(genai_provider.aclose())
    asyncio.run(legacy_provider.aclose())


def test_factory_sizes_the_pools_to_the_calls_in_flight(no_key_env: pytest.MonkeyPatch) -> None:
    """httpx's default pool (100) is smaller than the default config's calls
    in flight (4 extractors x 64 packs, plus a batch each): the rest would
    queue for a connection, their send marks and timeouts running."""
    default = replace(
        config(ProviderKind.GENAI),
        runtime=RuntimeConfig(),
        composer=ComposerConfig(mix={"main": 8}),
    )
    limit = calls_in_flight_limit(default)
    assert limit == 4 * (64 + 8)
    genai_provider, _ = make_provider(default, SystemClock(), api_key="k")
    legacy_config = replace(default, provider=ProviderConfig(kind=ProviderKind.LEGACY))
    legacy_provider, _ = make_provider(legacy_config, SystemClock(), api_key="k")
    assert isinstance(genai_provider, GenaiProvider)
    assert isinstance(legacy_provider, LegacyProvider)
    assert genai_provider.max_connections == limit
    assert legacy_provider.max_workers == limit
    asyncio.run(genai_provider.aclose())
    asyncio.run(legacy_provider.aclose())


def test_base_url_that_is_not_http_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "127.0.0.1:8765")
    with pytest.raises(InvalidBaseUrlError, match="GOOGLE_GEMINI_BASE_URL"):
        GenaiProvider(ProviderConfig(), api_key=KEY)
