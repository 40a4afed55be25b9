"""The seed plan's TaskManager and GeminiClient fallback, reimplemented faithfully.

From ``shared/seeds/000_9b633b270a351b1e.txt`` ("Sophisticated Tiered
Batching Plan"), sections 5 and 7:

* ``run_tasks`` awaits the tasks one after another, sleeping 0.5 s before
  every task but the first, each under ``asyncio.wait_for(task, timeout=60)``;
  a timeout gives the task ``{"error": "Task timeout"}``.
* ``model_usage_counter`` and ``models_in_cooldown`` are shared state; after
  a rate limit the model is added to the set and a task
  ``_remove_from_cooldown(model, wait_time)`` removes it after ``wait_time``
  -- so an earlier, shorter timer can clear a later, longer cooldown, as
  written.
* ``_run_single_task`` goes straight to the fallback when the primary is in
  cooldown.
* the client tries the tier's model, then the tier's fallback, then the
  global ``FALLBACK_MODEL``, checking rate limits (the cooldown set) before
  each attempt.

What the plan leaves open, chosen here: ``wait_time`` is the 429's
``retryDelay`` (60 s when absent); a task whose every model failed is
reported failed (the plan has no retry of failed articles); a daemon runs
``run_tasks`` over whatever has arrived, again and again. All times are
scaled by the bench's time scale (0.5 s and 60 s become ``0.5 * W / 60``
and ``W``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from bench.baselines.common import AsyncBaseline, GeminiCaller
from bench.harness import RunContext, feed_async
from tierbatch.policies.articles import Article
from tierbatch.policies.outcomes import RateLimited

STAGGER_S = 0.5
TASK_TIMEOUT_S = 60.0
DEFAULT_WAIT_S = 60.0


class SeedGeminiClient:
    """``generate_text_with_prompt_async(..., model_override, fallback_model)``."""

    def __init__(self, caller: GeminiCaller, manager: SeedTaskManager, fallback_model: str) -> None:
        self._caller = caller
        self._manager = manager
        self.FALLBACK_MODEL = fallback_model

    async def generate_text_with_prompt_async(
        self, article: Article, model_override: str, fallback_model: str | None
    ) -> dict[str, Any]:
        order: list[str] = []
        for model in (model_override, fallback_model, self.FALLBACK_MODEL):
            if model and model not in order:
                order.append(model)
        last_error = "no model available"
        for model in order:
            if model in self._manager.models_in_cooldown:  # the rate-limit check
                last_error = f"{model} in cooldown"
                continue
            outcome, ok = await self._caller.call(model, article)
            if ok:
                return {"model": model}
            if isinstance(outcome, RateLimited):
                self._manager.on_rate_limit(model, outcome.retry_delay_s)
            last_error = f"{model}: {type(outcome).__name__}"
        return {"error": last_error}


class SeedTaskManager:
    def __init__(self, ctx: RunContext, caller: GeminiCaller) -> None:
        settings = ctx.settings
        self.model_usage_counter: dict[str, int] = {m.name: 0 for m in settings.models}
        self.models_in_cooldown: set[str] = set()
        self._stagger_s = settings.real(STAGGER_S)
        self._timeout_s = settings.real(TASK_TIMEOUT_S)
        self._default_wait_s = settings.real(DEFAULT_WAIT_S)
        self._client = SeedGeminiClient(caller, self, settings.global_fallback)
        self._removal_tasks: set[asyncio.Task[None]] = set()
        self.rate_limits = 0

    def on_rate_limit(self, model_name: str, wait_time: float | None) -> None:
        self.rate_limits += 1
        self.models_in_cooldown.add(model_name)
        task = asyncio.create_task(
            self._remove_from_cooldown(model_name, wait_time or self._default_wait_s)
        )
        self._removal_tasks.add(task)
        task.add_done_callback(self._removal_tasks.discard)

    async def _remove_from_cooldown(self, model_name: str, wait_time: float) -> None:
        await asyncio.sleep(wait_time)
        if model_name in self.models_in_cooldown:
            self.models_in_cooldown.remove(model_name)

    async def _run_single_task(self, task_data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        article: Article = task_data["article"]
        if task_data.get("model_to_use") in self.models_in_cooldown:
            model_to_use = task_data.get("fallback_model") or self._client.FALLBACK_MODEL
        else:
            model_to_use = task_data["model_to_use"]
        result = await self._client.generate_text_with_prompt_async(
            article, model_override=model_to_use, fallback_model=task_data.get("fallback_model")
        )
        if "model" in result:
            self.model_usage_counter[result["model"]] += 1
        return article.id, result

    async def run_tasks(self, tasks: list[dict[str, Any]], on_result: Any) -> None:
        for i, task in enumerate(tasks):
            if i > 0:
                await asyncio.sleep(self._stagger_s)
            article_id = task["article"].id
            try:
                result = await asyncio.wait_for(
                    self._run_single_task(task), timeout=self._timeout_s
                )
            except TimeoutError:
                result = (article_id, {"error": "Task timeout"})
            on_result(*result)


class SeedTaskManagerSystem(AsyncBaseline):
    async def main(self, ctx: RunContext) -> None:
        caller = GeminiCaller(ctx)
        self._caller = caller
        manager = SeedTaskManager(ctx, caller)
        self._manager = manager
        tiers = ctx.tier_of()
        settings = ctx.settings
        arrived: deque[Article] = deque()
        wake = asyncio.Event()

        def put(articles: Any) -> None:
            self.ledger.take(list(articles))
            arrived.extend(articles)
            wake.set()

        feeder = asyncio.create_task(feed_async(ctx, put))

        def on_result(article_id: str, result: dict[str, Any]) -> None:
            self.ledger.finish(ctx, article_id, "model" in result, result.get("model"))

        while True:
            if not arrived:
                if feeder.done():
                    break
                wake.clear()
                await wake.wait()
                continue
            batch = list(arrived)
            arrived.clear()
            tasks = []
            for article in batch:
                plan = settings.tiers[tiers[article.id]]
                tasks.append(
                    {
                        "article": article,
                        "model_to_use": plan.model,
                        "fallback_model": plan.fallback or settings.global_fallback,
                    }
                )
            await manager.run_tasks(tasks, on_result)

    async def close(self) -> None:
        manager = getattr(self, "_manager", None)
        if manager is not None:
            self.stats = {
                "model_usage_counter": dict(manager.model_usage_counter),
                "rate_limits_seen": manager.rate_limits,
                "stopped_at": time.time(),
            }
        caller = getattr(self, "_caller", None)
        if caller is not None:
            await caller.aclose()
