"""The fake Gemini HTTP server, driven with plain http.client (the SDKs are
tested against it elsewhere)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from tierbatch.adapters.gemini.prompt import RESPONSE_SCHEMA, SYSTEM_INSTRUCTION, build_user_text
from tierbatch.adapters.simulation.fake_entities import answer_document, fake_prompt_token_count
from tierbatch.adapters.simulation.fake_gemini import (
    FakeGeminiServer,
    ServerNotRunningError,
    serve_forever,
)
from tierbatch.adapters.simulation.gemini_emulator import (
    FakeGeminiConfig,
    FaultRates,
    RetryDelayFormat,
    ServedRequest,
    format_retry_delay,
    key_fingerprint,
)
from tierbatch.adapters.simulation.quota_emulator import QuotaEmulator
from tierbatch.policies.articles import Article
from tierbatch.policies.config import ModelSpec, ProviderLimiter

MODEL = "gemini-2.5-flash"
OTHER = "gemini-2.5-flash-lite"
KEY = "test-key-1"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"
ARTICLES = (
    Article("a1", "President Joe Biden met Chancellor Olaf Scholz in Berlin.", "Biden visit"),
    Article("a2", "Apple Inc unveiled a new iPhone in California on Tuesday."),
    Article("a3", "The World Cup final in Qatar drew a record audience, FIFA said."),
)
QUOTA_IDS = {
    "minute": "GenerateRequestsPerMinutePerProjectPerModel",
    "day": "GenerateRequestsPerDayPerProjectPerModel",
    "tokens": "GenerateContentInputTokensPerModelPerMinute",
}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        """The candidate text of a generateContent answer."""
        return str(self.json()["candidates"][0]["content"]["parts"][0]["text"])


def generate_body(
    articles: Sequence[Article] = ARTICLES, *, max_output_tokens: int | None = None
) -> dict[str, Any]:
    """A request as google-genai sends it (camelCase)."""
    config: dict[str, Any] = {
        "responseMimeType": "application/json",
        "responseSchema": RESPONSE_SCHEMA,
        "temperature": 0.0,
    }
    if max_output_tokens is not None:
        config["maxOutputTokens"] = max_output_tokens
    return {
        "contents": [{"role": "user", "parts": [{"text": build_user_text(articles)}]}],
        "systemInstruction": {"parts": [{"text": SYSTEM_INSTRUCTION}]},
        "generationConfig": config,
    }


def connect(base_url: str, timeout: float = 10.0) -> http.client.HTTPConnection:
    url = urlsplit(base_url)
    return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)


def post(
    base_url: str,
    path: str = GENERATE,
    body: Mapping[str, Any] | bytes | None = None,
    *,
    key: str | None = KEY,
    method: str = "POST",
    timeout: float = 10.0,
    connection: http.client.HTTPConnection | None = None,
) -> Reply:
    conn = connection or connect(base_url, timeout)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["x-goog-api-key"] = key
    if body is None:
        body = generate_body()
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        if connection is None:
            conn.close()


def spec(rpm: int = 0, tpm: int = 0, rpd: int = 0, model: str = MODEL) -> ModelSpec:
    return ModelSpec(model, rpm=rpm, tpm=tpm, rpd=rpd)


@pytest.fixture
def server() -> Iterator[FakeGeminiServer]:
    """An unlimited server with no faults."""
    with FakeGeminiServer(FakeGeminiConfig(models={MODEL: spec()})) as s:
        yield s


def serve(**config: Any) -> FakeGeminiServer:
    s = FakeGeminiServer(FakeGeminiConfig(**config))
    s.start()
    return s


# --------------------------------------------------------------------------
# Answers


def test_success_has_geminis_answer_shape(server: FakeGeminiServer) -> None:
    reply = post(server.base_url)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    document = reply.json()
    (candidate,) = document["candidates"]
    assert candidate["finishReason"] == "STOP"
    assert candidate["index"] == 0
    assert candidate["content"]["role"] == "model"
    usage = document["usageMetadata"]
    expected_input = fake_prompt_token_count([SYSTEM_INSTRUCTION, build_user_text(ARTICLES)])
    assert usage["promptTokenCount"] == expected_input
    assert usage["candidatesTokenCount"] > 0
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert document["modelVersion"] == MODEL
    assert isinstance(document["responseId"], str) and document["responseId"]

    answer = json.loads(reply.text())
    assert [a["id"] for a in answer["articles"]] == ["a1", "a2", "a3"]
    articles = [{"id": a.id, "title": a.title, "text": a.text} for a in ARTICLES]
    assert answer == answer_document(articles, MODEL)
    names = {e["name"] for e in answer["articles"][0]["entities"]}
    assert {"Joe Biden", "Berlin"} <= names
    entity = answer["articles"][0]["entities"][0]
    assert set(entity) == {"name", "type", "salience", "mentions"}


def test_v1_and_encoded_and_prefixed_model_paths(server: FakeGeminiServer) -> None:
    paths = [
        f"/v1/models/{MODEL}:generateContent",
        f"/v1beta/models%2F{MODEL}%3AgenerateContent",
        f"/v1beta/models/models/{MODEL}:generateContent",
        f"/v1beta/models/{MODEL}:generateContent?$alt=json",
    ]
    for path in paths:
        assert post(server.base_url, path).status == 200, path
    versions = [r.api_version for r in server.log]
    assert versions == ["v1", "v1beta", "v1beta", "v1beta"]
    assert {r.model for r in server.log} == {MODEL}


def test_key_in_the_query_string(server: FakeGeminiServer) -> None:
    reply = post(server.base_url, f"{GENERATE}?key={KEY}", key=None)
    assert reply.status == 200
    assert server.log[-1].key_fingerprint == key_fingerprint(KEY)


def test_snake_case_and_integer_enum_requests_are_accepted(server: FakeGeminiServer) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": build_user_text(ARTICLES[:1])}]}],
        "system_instruction": {"parts": [{"text": SYSTEM_INSTRUCTION}]},
        "generation_config": {
            "response_mime_type": "application/json",
            "response_schema": {"type": 6, "properties": {"articles": {"type": 5}}},
            "max_output_tokens": 4096,
        },
    }
    reply = post(server.base_url, body=body)
    assert reply.status == 200
    assert json.loads(reply.text())["articles"][0]["id"] == "a1"
    expected = fake_prompt_token_count([SYSTEM_INSTRUCTION, build_user_text(ARTICLES[:1])])
    assert reply.json()["usageMetadata"]["promptTokenCount"] == expected


def test_integer_enums_when_the_legacy_sdk_asks_for_them(server: FakeGeminiServer) -> None:
    reply = post(server.base_url, f"{GENERATE}?%24alt=json%3Benum-encoding%3Dint")
    assert reply.status == 200
    assert reply.json()["candidates"][0]["finishReason"] == 1


def test_a_prompt_without_articles_gets_an_empty_answer(server: FakeGeminiServer) -> None:
    body = {"contents": [{"parts": [{"text": "Say hello."}]}]}
    reply = post(server.base_url, body=body)
    assert reply.status == 200
    assert json.loads(reply.text()) == {"articles": []}


def test_max_output_tokens_truncates_naturally(server: FakeGeminiServer) -> None:
    reply = post(server.base_url, body=generate_body(max_output_tokens=5))
    candidate = reply.json()["candidates"][0]
    assert candidate["finishReason"] == "MAX_TOKENS"
    assert len(reply.text()) <= 20
    assert reply.json()["usageMetadata"]["candidatesTokenCount"] <= 5


def test_count_tokens(server: FakeGeminiServer) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "abcdefgh" * 10}]}]}
    reply = post(server.base_url, f"/v1beta/models/{MODEL}:countTokens", body)
    assert reply.status == 200
    assert reply.json() == {"totalTokens": 20}
    wrapped = {"generateContentRequest": {"model": f"models/{MODEL}", **generate_body()}}
    reply = post(server.base_url, f"/v1/models/{MODEL}:countTokens", wrapped)
    expected = fake_prompt_token_count([SYSTEM_INSTRUCTION, build_user_text(ARTICLES)])
    assert reply.json() == {"totalTokens": expected}


def test_count_tokens_does_not_spend_generate_quota() -> None:
    with serve(models={MODEL: spec(rpm=1)}) as s:
        for _ in range(3):
            assert post(s.base_url, f"/v1beta/models/{MODEL}:countTokens").status == 200
        assert post(s.base_url).status == 200


def test_keep_alive_serves_many_requests_on_one_connection(server: FakeGeminiServer) -> None:
    conn = connect(server.base_url)
    try:
        for _ in range(5):
            assert post(server.base_url, connection=conn).status == 200
        sock = conn.sock
        assert post(server.base_url, connection=conn).status == 200
        assert conn.sock is sock  # the same socket: kept alive
    finally:
        conn.close()


def test_chunked_request_body(server: FakeGeminiServer) -> None:
    conn = connect(server.base_url)
    try:
        data = json.dumps(generate_body()).encode()
        chunks = [data[i : i + 100] for i in range(0, len(data), 100)]
        conn.request(
            "POST",
            GENERATE,
            body=iter(chunks),
            headers={"x-goog-api-key": KEY, "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(
            json.loads(response.read())["candidates"][0]["content"]["parts"][0]["text"]
        )
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Errors


def test_unknown_routes_bad_bodies_and_methods(server: FakeGeminiServer) -> None:
    base = server.base_url
    for path in ("/", "/v1beta/models", f"/v2/models/{MODEL}:generateContent"):
        reply = post(base, path)
        assert reply.status == 404
        assert reply.json()["error"]["status"] == "NOT_FOUND"
    assert post(base, f"/v1beta/models/{MODEL}:embedContent").status == 404
    assert post(base, GENERATE, method="GET", body=b"").status == 404
    bad = post(base, body=b"{not json")
    assert bad.status == 400
    assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "Invalid JSON payload" in bad.json()["error"]["message"]
    empty = post(base, body={"contents": []})
    assert empty.status == 400
    assert empty.json()["error"]["code"] == 400


def test_garbage_http_gets_400_and_a_closed_connection(server: FakeGeminiServer) -> None:
    url = urlsplit(server.base_url)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


def test_an_oversized_header_line_gets_400(server: FakeGeminiServer) -> None:
    url = urlsplit(server.base_url)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=5) as sock:
        sock.sendall(b"POST " + GENERATE.encode() + b" HTTP/1.1\r\nX-Big: " + b"x" * 100_000)
        sock.sendall(b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


def test_retired_model_gets_geminis_404() -> None:
    with serve(retired=frozenset({"gemini-1.5-pro"})) as s:
        reply = post(s.base_url, "/v1beta/models/gemini-1.5-pro:generateContent")
        assert reply.status == 404
        error = reply.json()["error"]
        assert error["code"] == 404
        assert error["status"] == "NOT_FOUND"
        assert error["message"].startswith(
            "models/gemini-1.5-pro is not found for API version v1beta, "
            "or is not supported for generateContent"
        )
        assert post(s.base_url).status == 200


def test_api_keys() -> None:
    with serve(valid_keys={"good-key"}) as s:
        missing = post(s.base_url, key=None)
        assert missing.status == 403
        assert missing.json()["error"]["status"] == "PERMISSION_DENIED"
        malformed = post(s.base_url, key="not a key!")
        assert malformed.status == 400
        error = malformed.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert error["message"] == "API key not valid. Please pass a valid API key."
        assert error["details"][0]["reason"] == "API_KEY_INVALID"
        forbidden = post(s.base_url, key="other-key")
        assert forbidden.status == 403
        assert forbidden.json()["error"]["status"] == "PERMISSION_DENIED"
        assert post(s.base_url, key="good-key").status == 200
        assert [r.status for r in s.log] == [403, 400, 403, 200]


def test_any_well_formed_key_works_without_valid_keys(server: FakeGeminiServer) -> None:
    assert post(server.base_url, key="anything-goes_123").status == 200


# --------------------------------------------------------------------------
# Quota


def _violation(reply: Reply) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    error = reply.json()["error"]
    (failure,) = [d for d in error["details"] if d["@type"].endswith("QuotaFailure")]
    return error, failure["violations"]


def test_429_has_geminis_body_and_no_retry_after_header() -> None:
    with serve(models={MODEL: spec(rpm=1)}) as s:
        assert post(s.base_url).status == 200
        reply = post(s.base_url)
        assert reply.status == 429
        assert "Retry-After" not in reply.headers
        error, (violation,) = _violation(reply)
        assert error["code"] == 429
        assert error["status"] == "RESOURCE_EXHAUSTED"
        assert error["message"].startswith("You exceeded your current quota")
        types = [d["@type"] for d in error["details"]]
        assert types == [
            "type.googleapis.com/google.rpc.QuotaFailure",
            "type.googleapis.com/google.rpc.Help",
            "type.googleapis.com/google.rpc.RetryInfo",
        ]
        assert violation == {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
            "quotaId": QUOTA_IDS["minute"],
            "quotaDimensions": {"location": "global", "model": MODEL},
            "quotaValue": "1",
        }
        delay = error["details"][2]["retryDelay"]
        assert re.fullmatch(r"\d+(\.\d+)?s", delay)
        assert 55.0 < float(delay[:-1]) <= 60.0
        logged = s.log[-1]
        assert logged.status == 429 and logged.quota_id == QUOTA_IDS["minute"]
        assert logged.article_ids == ("a1", "a2", "a3")
        assert logged.retry_delay_s == pytest.approx(float(delay[:-1]), abs=0.01)


def test_per_day_and_token_quota_ids() -> None:
    models = {MODEL: spec(rpd=1), OTHER: spec(tpm=100, model=OTHER)}
    with serve(models=models) as s:
        assert post(s.base_url).status == 200
        day = post(s.base_url)
        _, (violation,) = _violation(day)
        assert violation["quotaId"] == QUOTA_IDS["day"]
        delay = float(day.json()["error"]["details"][2]["retryDelay"][:-1])
        expected = QuotaEmulator({}).seconds_to_day_reset(time.time())
        assert delay == pytest.approx(expected, abs=5.0)

        tokens = post(s.base_url, f"/v1beta/models/{OTHER}:generateContent")
        assert tokens.status == 429
        _, (violation,) = _violation(tokens)
        assert violation["quotaId"] == QUOTA_IDS["tokens"]
        assert violation["quotaMetric"].endswith("generate_content_input_token_count")
        assert violation["quotaDimensions"]["model"] == OTHER
        assert s.log_summary()["rate_limited_by_quota_id"] == {
            QUOTA_IDS["day"]: 1,
            QUOTA_IDS["tokens"]: 1,
        }


def test_retry_delay_formats_and_missing_retry_info() -> None:
    assert format_retry_delay(45.83, RetryDelayFormat.FRACTIONAL) == "45.83s"
    assert format_retry_delay(26.0, RetryDelayFormat.FRACTIONAL) == "26s"
    assert format_retry_delay(45.1, RetryDelayFormat.INTEGER) == "46s"
    config = {"models": {MODEL: spec(rpm=1)}, "retry_delay_format": RetryDelayFormat.INTEGER}
    with serve(**config) as s:
        post(s.base_url)
        details = post(s.base_url).json()["error"]["details"]
        assert re.fullmatch(r"\d+s", details[2]["retryDelay"])
    with serve(models={MODEL: spec(rpm=1)}, include_retry_info=False) as s:
        post(s.base_url)
        reply = post(s.base_url)
        assert reply.status == 429
        types = [d["@type"] for d in reply.json()["error"]["details"]]
        assert not any(t.endswith("RetryInfo") for t in types)


def test_free_tier_quota_ids() -> None:
    with serve(models={MODEL: spec(rpm=1)}, free_tier=True) as s:
        post(s.base_url)
        _, (violation,) = _violation(post(s.base_url))
        assert violation["quotaId"] == QUOTA_IDS["minute"] + "-FreeTier"


def test_the_window_rolls_and_quota_is_per_key() -> None:
    with serve(models={MODEL: spec(rpm=2)}, window_s=0.5) as s:
        assert post(s.base_url).status == 200
        assert post(s.base_url).status == 200
        limited = post(s.base_url)
        assert limited.status == 429
        assert post(s.base_url, key="another-key").status == 200
        delay = float(limited.json()["error"]["details"][2]["retryDelay"][:-1])
        assert 0 < delay <= 0.5
        time.sleep(delay + 0.02)  # the client waits out retryDelay, as it must
        assert post(s.base_url).status == 200


def test_token_bucket_429_says_when_the_next_request_is_admitted() -> None:
    # 600 a minute: ten a second, and the bucket holds 0.2 s of it: two.
    config = {"models": {MODEL: spec(rpm=600)}, "limiter": ProviderLimiter.BUCKET, "bucket_s": 0.2}
    with serve(**config) as s:
        assert post(s.base_url).status == 200
        assert post(s.base_url).status == 200
        limited = post(s.base_url)
        assert limited.status == 429
        assert "Retry-After" not in limited.headers
        error, (violation,) = _violation(limited)
        assert violation["quotaId"] == QUOTA_IDS["minute"]
        assert violation["quotaValue"] == "600"
        types = [d["@type"].rsplit(".", 1)[1] for d in error["details"]]
        assert types == ["QuotaFailure", "Help", "RetryInfo"]
        delay = float(error["details"][2]["retryDelay"][:-1])
        # A tenth of a second at most (the refill of one request), not a window.
        assert 0 < delay <= 0.1
        time.sleep(delay + 0.02)  # the client waits out retryDelay, as it must
        assert post(s.base_url).status == 200
        assert post(s.base_url, key="another-key").status == 200


def test_the_limiter_shape_is_validated() -> None:
    with pytest.raises(ValueError, match="limiter must be one of window, bucket"):
        FakeGeminiConfig(limiter="leaky")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bucket_s"):
        FakeGeminiConfig(bucket_s=0)
    assert FakeGeminiConfig(limiter="bucket").limiter is ProviderLimiter.BUCKET  # type: ignore[arg-type]


def test_spend_simulates_another_client() -> None:
    with serve(models={MODEL: spec(rpm=5)}) as s:
        s.spend(KEY, MODEL, requests=5, tokens=0)
        assert post(s.base_url).status == 429
        assert post(s.base_url, key="someone-else").status == 200


def test_too_many_input_tokens_is_400() -> None:
    models = {MODEL: ModelSpec(MODEL, 0, 0, 0, max_input_tokens=10)}
    with serve(models=models) as s:
        reply = post(s.base_url)
        assert reply.status == 400
        assert "exceeds the maximum number of tokens" in reply.json()["error"]["message"]


# --------------------------------------------------------------------------
# Faults


def faulty(**rates: float) -> FakeGeminiServer:
    return serve(faults={MODEL: FaultRates(**rates)}, seed=11)


def test_server_errors_cover_500_502_503_504() -> None:
    with faulty(server_error=1.0) as s:
        statuses = set()
        for _ in range(40):
            reply = post(s.base_url)
            statuses.add(reply.status)
            if reply.status == 502:
                assert reply.headers["Content-Type"].startswith("text/html")
                assert b"502" in reply.body
            else:
                error = reply.json()["error"]
                assert error["code"] == reply.status
                assert error["status"] in {"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
        assert statuses == {500, 502, 503, 504}
        # Faults are per model: the other model answers.
        assert post(s.base_url, f"/v1beta/models/{OTHER}:generateContent").status == 200
        assert s.log_summary()["faults"] == {"server_error": 40}


def test_hang_makes_the_client_time_out_and_stop_is_prompt() -> None:
    s = serve(faults=FaultRates(hang=1.0), hang_s=120.0)
    try:
        with pytest.raises(TimeoutError):
            post(s.base_url, timeout=0.3)
        assert s.log[-1].fault == "hang"
    finally:
        began = time.monotonic()
        s.stop()
    assert time.monotonic() - began < 5.0


def test_malformed_json_text() -> None:
    with faulty(malformed_json_text=1.0) as s:
        reply = post(s.base_url)
        assert reply.status == 200
        assert reply.json()["candidates"][0]["finishReason"] == "STOP"
        with pytest.raises(json.JSONDecodeError):
            json.loads(reply.text())


def test_malformed_body() -> None:
    with faulty(malformed_body=1.0) as s:
        reply = post(s.base_url)
        assert reply.status == 200
        with pytest.raises(json.JSONDecodeError):
            reply.json()


def test_max_tokens_fault_truncates_the_json_text() -> None:
    with faulty(max_tokens=1.0) as s:
        reply = post(s.base_url)
        document = reply.json()
        assert document["candidates"][0]["finishReason"] == "MAX_TOKENS"
        with pytest.raises(json.JSONDecodeError):
            json.loads(reply.text())
        assert document["usageMetadata"]["candidatesTokenCount"] > 0
        assert s.log[-1].finish_reason == "MAX_TOKENS"


def test_safety_fault_finishes_with_safety_and_no_text() -> None:
    with faulty(safety=1.0) as s:
        document = post(s.base_url).json()
        (candidate,) = document["candidates"]
        assert candidate["finishReason"] == "SAFETY"
        assert "content" not in candidate
        assert candidate["safetyRatings"][0]["blocked"] is True
        assert "candidatesTokenCount" not in document["usageMetadata"]


def test_prompt_blocked_fault() -> None:
    with faulty(prompt_blocked=1.0) as s:
        document = post(s.base_url).json()
        assert "candidates" not in document
        assert document["promptFeedback"]["blockReason"] == "SAFETY"
        legacy = post(s.base_url, f"{GENERATE}?$alt=json;enum-encoding=int").json()
        assert legacy["promptFeedback"]["blockReason"] == 1


def test_missing_article_fault() -> None:
    with faulty(missing_article=1.0) as s:
        reply = post(s.base_url)
        ids = [a["id"] for a in json.loads(reply.text())["articles"]]
        assert len(ids) == 2 and set(ids) < {"a1", "a2", "a3"}
        assert s.log[-1].article_ids == ("a1", "a2", "a3")  # what was asked
        assert s.log[-1].fault == "missing_article"


def test_outages_answer_503_for_their_model_and_window() -> None:
    outages = {MODEL: (0.0, 3600.0), OTHER: (3600.0, 7200.0)}
    with serve(outages=outages) as s:
        reply = post(s.base_url)
        assert reply.status == 503
        assert reply.json()["error"]["status"] == "UNAVAILABLE"
        assert post(s.base_url, f"/v1beta/models/{OTHER}:generateContent").status == 200
        assert s.log[0].fault == "outage"


def test_fault_rates_and_config_are_validated() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FaultRates(hang=-0.1)
    with pytest.raises(ValueError, match="sum"):
        FaultRates(safety=0.5, max_tokens=0.6)
    with pytest.raises(ValueError, match="window_s"):
        FakeGeminiConfig(window_s=0)
    with pytest.raises(ValueError, match="ends before"):
        FakeGeminiConfig(outages={MODEL: (5.0, 1.0)})


def test_fault_draws_are_reproducible_with_a_seed() -> None:
    rates = FaultRates(server_error=0.3, safety=0.3, missing_article=0.2)

    def faults(seed: int) -> list[str]:
        with serve(faults=rates, seed=seed) as s:
            for _ in range(20):
                post(s.base_url)
            return [r.fault for r in s.log]

    assert faults(5) == faults(5)
    assert faults(5) != faults(6)


# --------------------------------------------------------------------------
# Scale, log and lifecycle


def test_200_concurrent_requests_are_all_answered() -> None:
    with serve(models={MODEL: spec()}, latency_s=0.2) as s:
        barrier = threading.Barrier(200, timeout=30)

        def one(i: int) -> int:
            articles = [Article(f"c{i}", f"Reuters reported from Paris on case {i}.")]
            barrier.wait()
            return post(s.base_url, body=generate_body(articles), timeout=30).status

        with ThreadPoolExecutor(max_workers=200) as pool:
            statuses = list(pool.map(one, range(200)))
        assert statuses == [200] * 200
        assert len(s.log) == 200
        assert {r.article_ids for r in s.log} == {(f"c{i}",) for i in range(200)}


def test_log_and_summary_never_hold_the_key() -> None:
    models = {MODEL: spec(rpm=2)}
    with serve(models=models, retired=frozenset({"old-model"})) as s:
        for _ in range(3):
            post(s.base_url)
        post(s.base_url, "/v1beta/models/old-model:generateContent")
        post(s.base_url, f"/v1beta/models/{MODEL}:countTokens", key="second-key")
        log = s.log
        assert all(isinstance(r, ServedRequest) for r in log)
        assert KEY not in repr(log)
        assert log[0].key_fingerprint == key_fingerprint(KEY) != KEY
        assert [(r.method, r.status) for r in log] == [
            ("generateContent", 200),
            ("generateContent", 200),
            ("generateContent", 429),
            ("generateContent", 404),
            ("countTokens", 200),
        ]
        assert log[0].input_tokens > 0 and log[0].output_tokens > 0
        summary = s.log_summary()
        assert summary["requests"] == 5
        assert summary["by_model"] == {MODEL: 4, "old-model": 1}
        assert summary["by_status"] == {200: 3, 429: 1, 404: 1}
        assert summary["by_method"] == {"generateContent": 4, "countTokens": 1}
        assert summary["rate_limited_by_model"] == {MODEL: 1}
        assert summary["articles_in_answered_requests"] == 6
        assert summary["input_tokens_by_model"][MODEL] == 2 * log[0].input_tokens
        assert summary["keys"] == 2
        json.dumps(summary)  # plain data


def test_lifecycle() -> None:
    s = FakeGeminiServer(FakeGeminiConfig())
    with pytest.raises(ServerNotRunningError):
        _ = s.base_url
    with pytest.raises(ServerNotRunningError):
        s.spend(KEY, MODEL, 1, 1)
    url = s.start()
    assert url.startswith("http://127.0.0.1:")
    assert s.start() == url  # idempotent
    assert post(url).status == 200
    s.stop()
    s.stop()  # idempotent
    with pytest.raises(OSError):
        post(url, timeout=2)


def test_serve_forever_until_stopped() -> None:
    ready: list[str] = []
    started = threading.Event()
    stop = threading.Event()

    def on_ready(url: str) -> None:
        ready.append(url)
        started.set()

    thread = threading.Thread(
        target=serve_forever,
        args=(FakeGeminiConfig(),),
        kwargs={"port": 0, "on_ready": on_ready, "stop": stop},
    )
    thread.start()
    try:
        assert started.wait(10)
        assert post(ready[0]).status == 200
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
