"""The fake server's model catalogue (``GET /v1beta/models[/X]``) over plain
HTTP and through both SDKs' own listing, the simulated provider's answers
from the config, and what missing models leave of the tiers."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from test_fake_gemini import KEY, post

from tierbatch.actors.clock import SystemClock
from tierbatch.actors.ports import BATCH_METHOD, ModelCatalog, ModelInfo
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import FakeGeminiConfig
from tierbatch.adapters.simulation.model_catalog import CURRENT_GEMINI_MODELS
from tierbatch.adapters.simulation.simulated import SimulatedProvider
from tierbatch.policies.config import ModelSpec, TierSpec
from tierbatch.policies.model_check import assess_coverage

MODEL = "gemini-2.5-flash"


def get(base_url: str, path: str, *, key: str | None = KEY) -> Any:
    return post(base_url, path, body=b"", key=key, method="GET")


def spec(name: str, max_input_tokens: int = 1_048_576) -> ModelSpec:
    return ModelSpec(name, rpm=0, tpm=0, rpd=0, max_input_tokens=max_input_tokens)


# --------------------------------------------------------------------------
# The HTTP routes


def test_get_has_geminis_shape_on_v1_and_v1beta() -> None:
    config = FakeGeminiConfig(models={"m-pro": spec("m-pro", 32_000)})
    with FakeGeminiServer(config) as server:
        for version in ("v1", "v1beta"):
            reply = get(server.base_url, f"/{version}/models/m-pro")
            assert reply.status == 200
            document = reply.json()
            assert document["name"] == "models/m-pro"
            assert document["displayName"] == "M Pro"
            assert document["inputTokenLimit"] == 32_000
            assert document["outputTokenLimit"] == 65_536
            assert BATCH_METHOD in document["supportedGenerationMethods"]
            assert "generateContent" in document["supportedGenerationMethods"]
        assert [(r.method, r.model, r.api_version) for r in server.log] == [
            ("models.get", "m-pro", "v1"),
            ("models.get", "m-pro", "v1beta"),
        ]


def test_retired_and_uncatalogued_models_get_geminis_404() -> None:
    retired = frozenset({"gemini-1.5-pro"})
    with FakeGeminiServer(FakeGeminiConfig(retired=retired, catalog={MODEL})) as server:
        for model in ("gemini-1.5-pro", "gemini-9"):
            reply = get(server.base_url, f"/v1beta/models/{model}")
            assert reply.status == 404
            error = reply.json()["error"]
            assert error["status"] == "NOT_FOUND"
            assert error["message"].startswith(f"models/{model} is not found for API version")
        # An explicit catalogue holds for generateContent too.
        assert post(server.base_url, "/v1beta/models/gemini-9:generateContent").status == 404
        assert post(server.base_url, f"/v1beta/models/{MODEL}:generateContent").status == 200


def test_without_a_catalogue_any_name_not_retired_exists() -> None:
    with FakeGeminiServer(FakeGeminiConfig()) as server:
        assert get(server.base_url, "/v1beta/models/whatever-model").status == 200


def test_same_key_checks_as_generate_content() -> None:
    with FakeGeminiServer(FakeGeminiConfig(valid_keys=frozenset({KEY}))) as server:
        base = server.base_url
        assert get(base, f"/v1beta/models/{MODEL}", key=None).status == 403
        bad = get(base, f"/v1beta/models/{MODEL}", key="bad*key")
        assert bad.status == 400
        assert bad.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        assert get(base, f"/v1beta/models/{MODEL}", key="not-the-key").status == 403
        assert get(base, "/v1beta/models", key="not-the-key").status == 403
        assert get(base, f"/v1beta/models/{MODEL}").status == 200
        assert get(base, f"/v1beta/models/{MODEL}?key={KEY}", key=None).status == 200


def test_listing_pages_with_page_tokens() -> None:
    models = {f"m-{i:02d}": spec(f"m-{i:02d}") for i in range(7)}
    with FakeGeminiServer(FakeGeminiConfig(models=models, retired={"m-03"})) as server:
        names: list[str] = []
        path = "/v1beta/models?pageSize=4"
        pages = 0
        while True:
            reply = get(server.base_url, path)
            assert reply.status == 200
            document = reply.json()
            names += [m["name"] for m in document["models"]]
            pages += 1
            token = document.get("nextPageToken")
            if not token:
                break
            path = f"/v1beta/models?pageSize=4&pageToken={token}"
        bad = get(server.base_url, "/v1beta/models?pageToken=bogus")
    expected = sorted({*models, *CURRENT_GEMINI_MODELS} - {"m-03"})
    assert names == [f"models/{name}" for name in expected]
    assert pages == 3
    assert bad.status == 400


def test_google_genai_lists_every_page() -> None:
    from google import genai
    from google.genai import types

    models = {f"m-{i:02d}": spec(f"m-{i:02d}") for i in range(5)}
    with FakeGeminiServer(FakeGeminiConfig(models=models, catalog=set(models))) as server:
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=server.base_url))
        listed = [m.name for m in client.models.list(config={"page_size": 2})]
        one = client.models.get(model="m-01")
        client.close()
        calls = [r.method for r in server.log]
    assert listed == [f"models/{name}" for name in sorted(models)]
    assert calls == ["models.list"] * 3 + ["models.get"]
    assert one.input_token_limit == 1_048_576
    assert one.supported_actions is not None and BATCH_METHOD in one.supported_actions


def test_google_generativeai_lists_and_gets() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import google.ai.generativelanguage as glm
        import google.generativeai as legacy
        from google.api_core.client_options import ClientOptions

    models = {f"m-{i:02d}": spec(f"m-{i:02d}", 8_000) for i in range(3)}
    with FakeGeminiServer(FakeGeminiConfig(models=models, catalog=set(models))) as server:
        client = glm.ModelServiceClient(
            transport="rest",
            client_options=ClientOptions(api_endpoint=server.base_url, api_key=KEY),
        )
        listed = [m.name for m in legacy.list_models(page_size=2, client=client)]
        got = legacy.get_model("models/m-02", client=client)
        client.transport.close()
    assert listed == [f"models/{name}" for name in sorted(models)]
    assert got.input_token_limit == 8_000
    assert BATCH_METHOD in got.supported_generation_methods


# --------------------------------------------------------------------------
# The simulated provider answers from the config


def test_simulated_provider_describes_configured_models() -> None:
    provider = SimulatedProvider(
        {"m-pro": spec("m-pro", 32_000), "m-old": spec("m-old")},
        SystemClock(),
        retired={"m-old"},
    )
    assert isinstance(provider, ModelCatalog)

    async def go() -> list[ModelInfo | None]:
        names = ("m-pro", "m-old", "m-unknown")
        return [await provider.describe_model(name, timeout_s=1.0) for name in names]

    pro, old, unknown = asyncio.run(go())
    assert isinstance(pro, ModelInfo)
    assert pro.name == "m-pro" and pro.input_token_limit == 32_000 and pro.supports_batch
    assert old is None and unknown is None


# --------------------------------------------------------------------------
# What missing models leave of the tiers


TIERS = (
    TierSpec("hot", 0.7, "pro", "flash"),
    TierSpec("warm", 0.4, "flash", "lite"),
    TierSpec("cold", 0.0, "lite"),
)


@pytest.mark.parametrize(
    ("missing", "stranded", "degraded"),
    [
        ((), [], []),
        (("pro",), [], ["hot"]),
        (("pro", "flash"), [], ["hot", "warm"]),
        (("lite",), ["cold"], ["hot", "warm"]),
        (("flash", "lite"), ["warm", "cold"], ["hot"]),
        (("pro", "flash", "lite"), ["hot", "warm", "cold"], []),
        (("unused",), [], []),
    ],
)
def test_coverage_names_stranded_and_degraded_tiers(
    missing: tuple[str, ...], stranded: list[str], degraded: list[str]
) -> None:
    coverage = assess_coverage(TIERS, "lite", missing)
    assert [t.tier for t in coverage.stranded] == stranded
    assert [t.tier for t in coverage.degraded] == degraded
    assert coverage.missing == tuple(sorted(missing))


def test_coverage_keeps_the_chain_order() -> None:
    coverage = assess_coverage(TIERS, "lite", {"pro"})
    hot = coverage.tiers[0]
    assert hot.chain == ("pro", "flash", "lite")
    assert hot.usable == ("flash", "lite")
    assert hot.primary_missing and hot.served
