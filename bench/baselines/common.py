"""What the asyncio baselines share: running until the deadline, the ledger of
articles they hold, and one Gemini call through google-genai.

The baselines call Gemini with the same google-genai client tierbatch uses
(``GenaiProvider``: the same request, the same answer parsing, errors mapped
to the same outcomes with the 429's ``retryDelay``), so what differs between
systems is only how they schedule calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from typing import Any

from bench.corpus import prompt_tokens
from bench.harness import RunContext, SystemResult
from bench.measure import thread_cpu_seconds
from tierbatch.actors.ports import ExtractionRequest
from tierbatch.adapters.gemini.genai_provider import GenaiProvider
from tierbatch.policies.articles import Article
from tierbatch.policies.config import ProviderConfig, ProviderKind
from tierbatch.policies.outcomes import CallOutcome, Succeeded
from tierbatch.policies.results import Extraction


class Ledger:
    """The articles a baseline was handed and still holds."""

    def __init__(self) -> None:
        self.fed: set[str] = set()
        self.held: set[str] = set()

    def take(self, articles: list[Article]) -> None:
        for a in articles:
            self.fed.add(a.id)
            self.held.add(a.id)

    def finish(self, ctx: RunContext, article_id: str, ok: bool, model: str | None) -> None:
        if article_id in self.held:
            self.held.discard(article_id)
            ctx.recorder.record(article_id, ok, model)

    def all_done(self, ctx: RunContext) -> bool:
        return not self.held and len(self.fed) == len(ctx.articles)


class GeminiCaller:
    """One article, one request, through google-genai."""

    def __init__(self, ctx: RunContext) -> None:
        self._provider = GenaiProvider(
            ProviderConfig(kind=ProviderKind.GENAI, base_url=ctx.base_url),
            api_key=ctx.api_key,
            default_timeout_s=ctx.settings.real(60.0),
        )
        self._timeout_s = ctx.settings.real(60.0)

    async def call(self, model: str, article: Article) -> tuple[CallOutcome, bool]:
        """The call's outcome and whether the article got a valid answer."""
        request = ExtractionRequest(
            model=model,
            articles=(article,),
            timeout_s=self._timeout_s,
            est_input_tokens=prompt_tokens((article,)),
        )
        answer = await self._provider.extract(request)
        ok = isinstance(answer.outcome, Succeeded) and isinstance(
            answer.answers.get(article.id), Extraction
        )
        return answer.outcome, ok

    async def aclose(self) -> None:
        await self._provider.aclose()


class AsyncBaseline(ABC):
    """Runs ``main`` on a fresh event loop until every article is terminal
    or the deadline passes, then reports what the ledger still holds."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.stats: dict[str, Any] = {}

    def prepare(self, ctx: RunContext) -> None:
        """Nothing to build before the clock starts, by default."""
        return None

    def run(self, ctx: RunContext) -> SystemResult:
        cpu_before = thread_cpu_seconds()
        asyncio.run(self._bounded(ctx))
        cpu_after = thread_cpu_seconds()
        return SystemResult(
            fed=set(self.ledger.fed),
            unfinished=set(self.ledger.held),
            stats=self.stats,
            cpu_by_thread={n: c - cpu_before.get(n, 0.0) for n, c in cpu_after.items()},
        )

    async def _bounded(self, ctx: RunContext) -> None:
        task = asyncio.ensure_future(self.main(ctx))
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=max(0.0, ctx.deadline - time.time()))
        await self.close()

    @abstractmethod
    async def main(self, ctx: RunContext) -> None: ...

    async def close(self) -> None:
        """Release clients (on the loop that used them); nothing by default."""
        return None
