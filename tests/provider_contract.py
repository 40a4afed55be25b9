"""The behaviour both Gemini SDK adapters must show against the local fake
Gemini server. ``test_genai_provider.py`` and ``test_legacy_provider.py``
subclass ``ProviderContract`` with their ``kind``.

Timeouts are kept short (0.5 s) so the suite stays fast; nothing sleeps to
wait for anything: every call is awaited.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from structlog.testing import capture_logs

from tierbatch.actors.ports import (
    BATCH_METHOD,
    ExtractionRequest,
    ModelCatalog,
    ModelInfo,
    ModelLookupFailed,
    PackAnswer,
    Provider,
    bind_request_sent,
)
from tierbatch.adapters.gemini.api_key import MissingApiKey
from tierbatch.adapters.gemini.prompt import RESPONSE_SCHEMA
from tierbatch.adapters.simulation.fake_entities import article_text, extract_entities
from tierbatch.adapters.simulation.fake_gemini import FakeGeminiServer
from tierbatch.adapters.simulation.gemini_emulator import (
    FakeGeminiConfig,
    FaultRates,
    RetryDelayFormat,
    key_fingerprint,
)
from tierbatch.policies.articles import Article
from tierbatch.policies.config import ModelSpec, ProviderConfig
from tierbatch.policies.outcomes import (
    AuthFailed,
    BadRequest,
    ModelNotFound,
    RateLimited,
    RateLimitScope,
    ServerError,
    Succeeded,
    TimedOut,
)
from tierbatch.policies.results import AnswerProblem, Extraction, ProblemKind

KEY = "tierbatch-test-KEY-0123456789"
MODEL = "gemini-2.5-flash"
TIMEOUT_S = 0.5

ARTICLES = (
    Article(
        id="a1",
        title="Merkel visits Paris",
        text="Angela Merkel met Emmanuel Macron in Paris on Monday. Merkel praised Airbus.",
    ),
    Article(
        id="a2",
        title="Storm hits Oslo",
        text="A storm closed Oslo Airport. Equinor said its Johan Sverdrup field was safe.",
    ),
    Article(
        id="a3",
        title="Apple launches iPhone",
        text="Tim Cook presented the new iPhone in Cupertino. Apple shares rose in New York.",
    ),
)


def request(
    articles: tuple[Article, ...] = ARTICLES[:1], model: str = MODEL, timeout_s: float = TIMEOUT_S
) -> ExtractionRequest:
    return ExtractionRequest(
        model=model, articles=articles, timeout_s=timeout_s, est_input_tokens=50
    )


def expected_extraction(article: Article, model: str = MODEL) -> Extraction:
    return Extraction(extract_entities(article_text(article.title, article.text), model))


@contextmanager
def fake_server(**config: Any) -> Iterator[FakeGeminiServer]:
    config.setdefault("hang_s", 5.0)
    with FakeGeminiServer(FakeGeminiConfig(**config)) as server:
        yield server


def problems(answer: PackAnswer) -> dict[str, Any]:
    return {
        article_id: a.kind if isinstance(a, AnswerProblem) else "ok"
        for article_id, a in answer.answers.items()
    }


class ProviderContract:
    """Shared tests; subclasses set ``kind`` and implement ``make``."""

    kind = ""

    def make(self, config: ProviderConfig, api_key: str | None = KEY) -> Provider:
        raise NotImplementedError

    def make_pooled(self, config: ProviderConfig, calls_at_once: int) -> Provider:
        """A provider that can have only ``calls_at_once`` calls on the wire."""
        raise NotImplementedError

    def call(
        self,
        server: FakeGeminiServer,
        *requests: ExtractionRequest,
        api_key: str | None = KEY,
        **provider_config: Any,
    ) -> list[PackAnswer]:
        """Run ``requests`` one after another on a fresh provider, then close it."""
        provider = self.make(ProviderConfig(base_url=server.base_url, **provider_config), api_key)

        async def go() -> list[PackAnswer]:
            try:
                return [await provider.extract(r) for r in requests]
            finally:
                await provider.aclose()

        return asyncio.run(go())

    def test_marks_when_the_request_leaves(self) -> None:
        """The adapter tells the runtime when the request really goes out
        (after the SDK's own work, before the server answers), once."""
        with fake_server(latency_s=0.05) as server:
            provider = self.make(ProviderConfig(base_url=server.base_url))
            marks: list[float] = []

            async def go() -> tuple[float, float, PackAnswer]:
                bind_request_sent(lambda: marks.append(time.monotonic()))
                try:
                    before = time.monotonic()
                    answer = await provider.extract(request())
                    return before, time.monotonic(), answer
                finally:
                    await provider.aclose()

            before, after, answer = asyncio.run(go())
            arrived = server.log[-1].at
        assert isinstance(answer.outcome, Succeeded)
        assert len(marks) == 1
        assert before <= marks[0] <= after
        assert time.time() - (time.monotonic() - marks[0]) <= arrived + 0.01

    def test_request_marked_sent_only_after_connection_acquired(self) -> None:
        """Two calls, one connection (or worker thread): the second queues
        until the first is answered. Its send mark must come once it has the
        connection, not while it queues, and the queueing must not count
        against its timeout (each call alone takes 0.6 s of its 1 s; both
        together 1.2 s)."""
        latency = 0.6
        with fake_server(latency_s=latency) as server:
            provider = self.make_pooled(ProviderConfig(base_url=server.base_url), 1)
            marks: dict[str, list[float]] = {}

            async def one(article: Article) -> PackAnswer:
                mine = marks.setdefault(article.id, [])
                bind_request_sent(lambda: mine.append(time.time()))
                return await provider.extract(request((article,), timeout_s=1.0))

            async def go() -> list[PackAnswer]:
                try:
                    return list(await asyncio.gather(one(ARTICLES[0]), one(ARTICLES[1])))
                finally:
                    await provider.aclose()

            answers = asyncio.run(go())
            arrivals = {s.article_ids[0]: s.at for s in server.log}
        assert [type(a.outcome) for a in answers] == [Succeeded, Succeeded]
        first, second = sorted(arrivals, key=lambda article_id: arrivals[article_id])
        assert arrivals[second] >= arrivals[first] + latency * 0.9, "the second call queued"
        assert marks[second], "the second call was marked sent"
        assert min(marks[second]) >= arrivals[first] + latency / 2

    def test_call_that_never_gets_a_connection_is_cancelled_not_timed_out(self) -> None:
        """Three calls, one connection, 0.6 s each: the third waits 1.2 s,
        past its 1 s budget for a connection. It was never sent, so it is
        ``Cancelled`` (its quota is refunded, the model's health untouched),
        and it is not sent later either."""
        with fake_server(latency_s=0.6) as server:
            provider = self.make_pooled(ProviderConfig(base_url=server.base_url), 1)

            async def go() -> list[PackAnswer]:
                calls = [provider.extract(request((a,), timeout_s=1.0)) for a in ARTICLES]
                try:
                    return list(await asyncio.gather(*calls))
                finally:
                    await provider.aclose()

            answers = asyncio.run(go())
            served = server.log
        kinds = sorted(type(a.outcome).__name__ for a in answers)
        assert kinds == ["Cancelled", "Succeeded", "Succeeded"]
        assert len(served) == 2

    # -- answers ---------------------------------------------------------

    def test_implements_provider(self) -> None:
        with fake_server() as server:
            provider = self.make(ProviderConfig(base_url=server.base_url))
            assert isinstance(provider, Provider)
            asyncio.run(provider.aclose())

    def test_success_single_article(self) -> None:
        schema = copy.deepcopy(RESPONSE_SCHEMA)
        with fake_server() as server:
            [answer] = self.call(server, request())
            [served] = server.log
        assert isinstance(answer.outcome, Succeeded)
        assert answer.outcome.usage.input_tokens == served.input_tokens > 0
        assert answer.outcome.usage.output_tokens == served.output_tokens > 0
        assert answer.answers == {"a1": expected_extraction(ARTICLES[0])}
        assert served.key_fingerprint == key_fingerprint(KEY)
        assert served.api_version == "v1beta"
        assert served.article_ids == ("a1",)
        assert served.model == MODEL
        assert schema == RESPONSE_SCHEMA  # the SDK did not rewrite the shared schema

    def test_pack_is_demultiplexed_per_article(self) -> None:
        with fake_server() as server:
            [answer] = self.call(server, request(ARTICLES))
            [served] = server.log
        assert served.article_ids == ("a1", "a2", "a3")
        assert isinstance(answer.outcome, Succeeded)
        assert answer.answers == {a.id: expected_extraction(a) for a in ARTICLES}
        assert all(isinstance(a, Extraction) and a.entities for a in answer.answers.values())

    def test_concurrent_calls(self) -> None:
        with fake_server(latency_s=0.05) as server:
            provider = self.make(ProviderConfig(base_url=server.base_url))

            async def go() -> list[PackAnswer]:
                try:
                    calls = [provider.extract(request((a,))) for a in ARTICLES * 3]
                    return await asyncio.gather(*calls)
                finally:
                    await provider.aclose()

            answers = asyncio.run(go())
            assert len(server.log) == 9
        assert all(isinstance(a.outcome, Succeeded) for a in answers)
        assert [next(iter(a.answers)) for a in answers] == [a.id for a in ARTICLES * 3]

    def test_malformed_json_text(self) -> None:
        with fake_server(faults=FaultRates(malformed_json_text=1.0)) as server:
            [answer] = self.call(server, request(ARTICLES))
        assert isinstance(answer.outcome, Succeeded)
        assert problems(answer) == dict.fromkeys(("a1", "a2", "a3"), ProblemKind.MALFORMED)

    def test_malformed_body_is_a_server_error(self) -> None:
        with fake_server(faults=FaultRates(malformed_body=1.0)) as server:
            [answer] = self.call(server, request(ARTICLES))
            assert len(server.log) == 1
        assert isinstance(answer.outcome, ServerError)
        assert answer.outcome.status is None
        assert answer.answers == {}

    def test_max_tokens(self) -> None:
        with fake_server(faults=FaultRates(max_tokens=1.0)) as server:
            [answer] = self.call(server, request(ARTICLES))
        assert isinstance(answer.outcome, Succeeded)
        kinds = problems(answer)
        assert set(kinds) == {"a1", "a2", "a3"}
        assert kinds["a3"] == ProblemKind.TRUNCATED  # the text is cut in half
        for article in ARTICLES:  # salvaged items are complete and correct
            if kinds[article.id] == "ok":
                assert answer.answers[article.id] == expected_extraction(article)
            else:
                assert kinds[article.id] == ProblemKind.TRUNCATED

    @pytest.mark.parametrize("fault", ["safety", "prompt_blocked"])
    def test_safety(self, fault: str) -> None:
        with fake_server(faults=FaultRates(**{fault: 1.0})) as server:
            [answer] = self.call(server, request(ARTICLES))
        assert isinstance(answer.outcome, Succeeded)
        assert problems(answer) == dict.fromkeys(("a1", "a2", "a3"), ProblemKind.SAFETY)

    def test_missing_article(self) -> None:
        with fake_server(faults=FaultRates(missing_article=1.0), seed=3) as server:
            [answer] = self.call(server, request(ARTICLES))
        kinds = problems(answer)
        [absent] = [i for i, kind in kinds.items() if kind == ProblemKind.MISSING]
        for article in ARTICLES:
            if article.id != absent:
                assert answer.answers[article.id] == expected_extraction(article)

    # -- rate limits -----------------------------------------------------

    @pytest.mark.parametrize(
        ("spec", "spend", "scope"),
        [
            (ModelSpec(MODEL, rpm=2, tpm=0, rpd=0), (2, 0), RateLimitScope.REQUESTS_PER_MINUTE),
            (ModelSpec(MODEL, rpm=0, tpm=1000, rpd=0), (1, 1000), RateLimitScope.TOKENS_PER_MINUTE),
            (ModelSpec(MODEL, rpm=0, tpm=0, rpd=3), (3, 0), RateLimitScope.REQUESTS_PER_DAY),
        ],
    )
    def test_rate_limited_scope_and_fractional_delay(
        self, spec: ModelSpec, spend: tuple[int, int], scope: RateLimitScope
    ) -> None:
        with fake_server(models={MODEL: spec}) as server:
            server.spend(KEY, MODEL, *spend)
            [answer] = self.call(server, request())
            [served] = server.log
        assert served.status == 429
        assert isinstance(answer.outcome, RateLimited)
        assert answer.outcome.scope is scope
        assert served.retry_delay_s is not None
        assert answer.outcome.retry_delay_s == pytest.approx(served.retry_delay_s, abs=1e-3)
        assert answer.answers == {}

    def test_integer_retry_delay(self) -> None:
        spec = ModelSpec(MODEL, rpm=1, tpm=0, rpd=0)
        with fake_server(models={MODEL: spec}, retry_delay_format=RetryDelayFormat.INTEGER) as s:
            s.spend(KEY, MODEL, 1, 0)
            [answer] = self.call(s, request())
        assert isinstance(answer.outcome, RateLimited)
        delay = answer.outcome.retry_delay_s
        assert delay is not None and delay == int(delay) and delay > 0

    def test_rate_limited_without_retry_info(self) -> None:
        spec = ModelSpec(MODEL, rpm=1, tpm=0, rpd=0)
        with fake_server(models={MODEL: spec}, include_retry_info=False) as server:
            answers = self.call(server, request(), request())
        assert isinstance(answers[0].outcome, Succeeded)
        assert answers[1].outcome == RateLimited(
            RateLimitScope.REQUESTS_PER_MINUTE,
            None,
            answers[1].outcome.message,  # type: ignore[union-attr]
        )

    # -- errors ----------------------------------------------------------

    def test_server_errors_are_not_retried_by_the_sdk(self) -> None:
        with fake_server(faults=FaultRates(server_error=1.0), seed=1) as server:
            answers = self.call(server, *[request()] * 6)
            log = server.log
        assert len(log) == 6  # one request per call: the SDK did not retry
        for answer, served in zip(answers, log, strict=True):
            assert answer.outcome == ServerError(served.status, answer.outcome.message)  # type: ignore[union-attr]
        assert {s.status for s in log} <= {500, 502, 503, 504}

    def test_outage_503_sent_once(self) -> None:
        with fake_server(outages={MODEL: (0.0, 1e9)}) as server:
            [answer] = self.call(server, request())
            assert [s.status for s in server.log] == [503]
        assert isinstance(answer.outcome, ServerError)
        assert answer.outcome.status == 503

    def test_hang_times_out_within_the_timeout(self) -> None:
        with fake_server(faults=FaultRates(hang=1.0)) as server:
            started = time.monotonic()
            [answer] = self.call(server, request(timeout_s=TIMEOUT_S))
            elapsed = time.monotonic() - started
        assert isinstance(answer.outcome, TimedOut)
        assert TIMEOUT_S * 0.9 <= answer.outcome.after_s < TIMEOUT_S + 0.5
        assert elapsed < TIMEOUT_S + 2.0

    def test_connection_refused_is_a_server_error(self) -> None:
        with fake_server() as server:
            base_url = server.base_url
        provider = self.make(ProviderConfig(base_url=base_url))

        async def go() -> PackAnswer:
            try:
                return await provider.extract(request())
            finally:
                await provider.aclose()

        answer = asyncio.run(go())
        assert isinstance(answer.outcome, ServerError)
        assert answer.outcome.status is None

    def test_bad_request(self) -> None:
        spec = ModelSpec(MODEL, rpm=0, tpm=0, rpd=0, max_input_tokens=5)
        with fake_server(models={MODEL: spec}) as server:
            [answer] = self.call(server, request())
        assert isinstance(answer.outcome, BadRequest)
        assert "exceeds" in answer.outcome.message

    def test_retired_model(self) -> None:
        with fake_server(retired=frozenset({"gemini-1.5-pro"})) as server:
            [answer] = self.call(server, request(model="gemini-1.5-pro"))
        assert isinstance(answer.outcome, ModelNotFound)
        assert "gemini-1.5-pro" in answer.outcome.message

    def test_invalid_key_is_auth_failure_without_the_key(self) -> None:
        bad_key = "bad*key*SECRET*4242"  # not a key's syntax: 400 API_KEY_INVALID
        with fake_server() as server, capture_logs() as logs:
            [answer] = self.call(server, request(), api_key=bad_key)
            assert [s.status for s in server.log] == [400]
        assert isinstance(answer.outcome, AuthFailed)
        assert answer.outcome.status == 400
        assert "GEMINI_API_KEY" in answer.outcome.message
        assert "SECRET" not in repr(answer) + repr(logs)

    def test_forbidden_key_is_auth_failure_without_the_key(self) -> None:
        other = "someone-elses-key-SECRET-777"
        with fake_server(valid_keys=frozenset({KEY})) as server, capture_logs() as logs:
            [answer] = self.call(server, request(), api_key=other)
            assert [s.status for s in server.log] == [403]
        assert isinstance(answer.outcome, AuthFailed)
        assert answer.outcome.status == 403
        assert "GEMINI_API_KEY or GOOGLE_API_KEY" in answer.outcome.message
        assert "SECRET" not in repr(answer) + repr(logs)

    def test_key_never_in_outcomes_or_logs(self) -> None:
        key = "distinctive-key-XYZZY-31337"
        spec = ModelSpec(MODEL, rpm=2, tpm=0, rpd=0)
        faults = {
            MODEL: FaultRates(server_error=1.0),
            "m-hang": FaultRates(hang=1.0),
            "m-bad": FaultRates(malformed_body=1.0),
        }
        retired = frozenset({"old"})
        with (
            fake_server(models={MODEL: spec}, faults=faults, retired=retired) as server,
            capture_logs() as logs,
        ):
            answers = self.call(
                server,
                request(),
                request(model="m-hang"),
                request(model="m-bad"),
                request(model="old"),
                request(),
                request(),
                request(model="m-ok"),
                api_key=key,
            )
        kinds = [type(a.outcome).__name__ for a in answers]
        assert kinds == [
            "ServerError",
            "TimedOut",
            "ServerError",
            "ModelNotFound",
            "ServerError",
            "RateLimited",
            "Succeeded",
        ]
        assert logs, "the adapter logs every call"
        assert all(e.get("model") for e in logs if e.get("provider") == self.kind)
        assert "XYZZY" not in repr(answers) + repr(logs)

    # -- the models check (ModelCatalog) ---------------------------------

    def describe(
        self, base_url: str, *names: str, api_key: str | None = KEY, timeout_s: float = 30.0
    ) -> list[ModelInfo | ModelLookupFailed | None]:
        """``describe_model`` for each name, at once, on a fresh provider. The
        lookups are answered at once; the generous default keeps a loaded
        machine from turning them into timeouts (the timeout test passes its own)."""
        provider = self.make(ProviderConfig(base_url=base_url), api_key)
        assert isinstance(provider, ModelCatalog)

        async def one(name: str) -> ModelInfo | ModelLookupFailed | None:
            try:
                return await provider.describe_model(name, timeout_s=timeout_s)
            except ModelLookupFailed as exc:
                return exc

        async def go() -> list[ModelInfo | ModelLookupFailed | None]:
            try:
                return list(await asyncio.gather(*(one(name) for name in names)))
            finally:
                await provider.aclose()

        return asyncio.run(go())

    def test_describes_the_models_it_has(self) -> None:
        lite = "gemini-2.5-flash-lite"
        spec = ModelSpec(MODEL, rpm=0, tpm=0, rpd=0, max_input_tokens=200_000)
        with fake_server(models={MODEL: spec}, without_batch=frozenset({lite})) as server:
            flash, light = self.describe(server.base_url, MODEL, lite)
            served = server.log
        assert flash == ModelInfo(
            name=MODEL,
            display_name="Gemini 2.5 Flash",
            input_token_limit=200_000,
            output_token_limit=65_536,
            methods=("generateContent", "countTokens", "createCachedContent", BATCH_METHOD),
        )
        assert isinstance(flash, ModelInfo) and flash.supports_batch
        assert isinstance(light, ModelInfo) and not light.supports_batch
        assert light.input_token_limit == 1_048_576
        assert sorted((s.method, s.model, s.status) for s in served) == [
            ("models.get", MODEL, 200),
            ("models.get", lite, 200),
        ]
        assert {s.key_fingerprint for s in served} == {key_fingerprint(KEY)}

    def test_a_retired_or_unknown_model_is_none(self) -> None:
        with fake_server(retired=frozenset({"gemini-1.5-pro"}), catalog={MODEL}) as server:
            answers = self.describe(server.base_url, "gemini-1.5-pro", "gemini-9-ultra", MODEL)
            statuses = sorted(s.status for s in server.log)
        assert answers[:2] == [None, None]
        assert isinstance(answers[2], ModelInfo)
        assert statuses == [200, 404, 404]

    def test_a_refused_key_fails_the_lookup_as_auth_without_the_key(self) -> None:
        other = "someone-elses-key-SECRET-777"
        with fake_server(valid_keys=frozenset({KEY})) as server, capture_logs() as logs:
            [failed] = self.describe(server.base_url, MODEL, api_key=other)
            assert [s.status for s in server.log] == [403]
        assert isinstance(failed, ModelLookupFailed)
        assert isinstance(failed.outcome, AuthFailed) and failed.outcome.status == 403
        assert failed.model == MODEL
        assert "SECRET" not in repr(failed.outcome) + str(failed) + repr(logs)

    def test_no_answer_fails_the_lookup_as_timed_out(self) -> None:
        with socket.socket() as silent:  # accepts connections (backlog), never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
            started = time.monotonic()
            [failed] = self.describe(f"http://127.0.0.1:{port}", MODEL, timeout_s=0.3)
            took = time.monotonic() - started
        assert isinstance(failed, ModelLookupFailed)
        assert isinstance(failed.outcome, TimedOut)
        assert took < 5.0  # bounded by the timeout, not by the SDK's defaults

    def test_a_refused_connection_fails_the_lookup_as_a_server_error(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        [failed] = self.describe(f"http://127.0.0.1:{port}", MODEL)
        assert isinstance(failed, ModelLookupFailed)
        assert isinstance(failed.outcome, ServerError)

    # -- configuration ---------------------------------------------------

    def test_key_from_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GEMINI_API_KEY", "gemini-env-key")
        monkeypatch.setenv("GOOGLE_API_KEY", "google-env-key")
        with fake_server(valid_keys=frozenset({"gemini-env-key"})) as server:
            [answer] = self.call(server, request(), api_key=None)
        assert isinstance(answer.outcome, Succeeded)

        monkeypatch.delenv("GEMINI_API_KEY")
        with fake_server(valid_keys=frozenset({"google-env-key"})) as server:
            [answer] = self.call(server, request(), api_key=None)
            [served] = server.log
        assert isinstance(answer.outcome, Succeeded)
        assert served.key_fingerprint == key_fingerprint("google-env-key")

    def test_key_env_names_from_config(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MY_GEMINI_KEY", "custom-env-key")
        with fake_server(valid_keys=frozenset({"custom-env-key"})) as server:
            [answer] = self.call(server, request(), api_key=None, api_key_env=("MY_GEMINI_KEY",))
        assert isinstance(answer.outcome, Succeeded)

    def test_missing_key_names_the_variables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("GEMINI_API_KEY", raising=False)
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
        with pytest.raises(MissingApiKey, match="GEMINI_API_KEY, GOOGLE_API_KEY"):
            self.make(ProviderConfig(base_url="http://127.0.0.1:9"), api_key=None)

    def test_two_providers_with_different_keys_do_not_clash(self) -> None:
        with fake_server() as server:
            first = self.make(ProviderConfig(base_url=server.base_url), "first-key-1111")
            second = self.make(ProviderConfig(base_url=server.base_url), "second-key-2222")

            async def go() -> None:
                try:
                    await asyncio.gather(first.extract(request()), second.extract(request()))
                    await first.extract(request())
                finally:
                    await first.aclose()
                    await second.aclose()

            asyncio.run(go())
            fingerprints = [s.key_fingerprint for s in server.log]
        assert sorted(fingerprints) == sorted(
            [key_fingerprint("first-key-1111")] * 2 + [key_fingerprint("second-key-2222")]
        )

    def test_base_url_from_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with fake_server() as server:
            monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
            provider = self.make(ProviderConfig())
            assert server.base_url in provider.description  # type: ignore[attr-defined]

            async def go() -> PackAnswer:
                try:
                    return await provider.extract(request())
                finally:
                    await provider.aclose()

            answer = asyncio.run(go())
            assert len(server.log) == 1
        assert isinstance(answer.outcome, Succeeded)

    def test_description_names_the_endpoint(self) -> None:
        with fake_server() as server:
            provider = self.make(ProviderConfig(base_url=server.base_url))
            assert server.base_url in provider.description  # type: ignore[attr-defined]
            asyncio.run(provider.aclose())
