"""LiteLLM's Router, configured as its documentation recommends for rate limits,
pointed at the local Gemini-compatible server.

* ``model_list``: one deployment per Gemini model, ``gemini/<model>`` with
  ``api_base = <server>/v1beta`` (LiteLLM's Gemini provider then calls
  ``{api_base}/models/<model>:generateContent`` with the ``x-goog-api-key``
  header: the same REST API as Google's), each with its ``rpm`` and ``tpm``;
* ``routing_strategy="usage-based-routing-v2"``: the rate-limit-aware
  strategy, which picks a deployment that stays under its rpm and tpm this
  minute;
* ``fallbacks``: each tier's chain (pro -> flash -> flash-lite, flash ->
  flash-lite), ``num_retries=2``, default ``allowed_fails`` and cooldowns.

Time scaling. LiteLLM counts rpm/tpm in fixed wall-clock minutes (cache keys
named after ``HH-MM`` of ``litellm.utils.get_utc_datetime()``). To run it on
the bench's scaled time like every other system, the bench gives those
modules a clock whose minute lasts one bench window, so a deployment's
``rpm`` is spent per window exactly as the server's quota is; scales every
sleep of its router (retry backoff) the same way; and scales its cooldown
(5 s) and timeout (60 s). The fixed minute is LiteLLM's
own design: at each minute boundary it starts a fresh count while Gemini's
window is rolling. ``tpm`` counts input plus output tokens in LiteLLM;
Gemini's limit counts input tokens only, so it is set to the input limit,
which is the conservative reading.

The application around the router is a pool of workers (256 concurrent
requests) over a queue of articles in arrival order; an article whose call
failed goes back to the end of the queue, up to 10 attempts (tierbatch's
default budget). LiteLLM is imported lazily: it is an optional dependency
(the ``bench`` extra).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench.baselines.common import AsyncBaseline
from bench.harness import RunContext, feed_async
from tierbatch.adapters.gemini.answers import analyse_answer
from tierbatch.adapters.gemini.prompt import SYSTEM_INSTRUCTION, build_user_text
from tierbatch.policies.articles import Article
from tierbatch.policies.results import Extraction

WORKERS = 256
MAX_ATTEMPTS = 10
NUM_RETRIES = 2
COOLDOWN_S = 5.0
TIMEOUT_S = 60.0


def import_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def scale_litellm_time(window_s: float) -> None:
    """Run LiteLLM's clocks on the bench's scaled time: its per-minute
    counters count per ``window_s`` real seconds (a scaled minute starts half
    way through a wall-clock minute, the average case), and every sleep its
    router takes (retry backoff, waiting for a minute to reset) lasts
    ``window_s / 60`` of what it asks for."""
    litellm = import_litellm()
    from litellm import router_python_host

    original = litellm.utils.get_utc_datetime
    origin = time.time()
    speed = 60.0 / window_s
    start = (origin // 60) * 60 + 30  # scaled time starts at HH:MM:30

    def scaled_utc_datetime() -> datetime:
        return datetime.fromtimestamp(start + (time.time() - origin) * speed, UTC)

    for name, module in list(sys.modules.items()):
        if name.startswith("litellm") and getattr(module, "get_utc_datetime", None) is original:
            module.get_utc_datetime = scaled_utc_datetime  # type: ignore[attr-defined]

    def scaled_sleep(self: Any, seconds: float) -> Any:
        return asyncio.sleep(seconds / speed)

    router_python_host.PythonHost.sleep = scaled_sleep  # type: ignore[method-assign]


def router_for(ctx: RunContext) -> Any:
    from litellm.router import Router

    settings = ctx.settings
    model_list = [
        {
            "model_name": m.name,
            "litellm_params": {
                "model": f"gemini/{m.name}",
                "api_base": f"{ctx.base_url}/v1beta",
                "api_key": ctx.api_key,
                "rpm": m.rpm,
                "tpm": m.tpm,
            },
        }
        for m in settings.models
    ]
    fallbacks: list[dict[str, list[str]]] = []
    for tier_index, plan in enumerate(settings.tiers):
        rest = list(settings.chain(tier_index)[1:])
        if rest and all(plan.model not in f for f in fallbacks):
            fallbacks.append({plan.model: rest})
    return Router(
        model_list=model_list,
        routing_strategy="usage-based-routing-v2",
        fallbacks=fallbacks,
        num_retries=NUM_RETRIES,
        cooldown_time=settings.real(COOLDOWN_S),
        timeout=settings.real(TIMEOUT_S),
    )


class LiteLLMRouterSystem(AsyncBaseline):
    def prepare(self, ctx: RunContext) -> None:
        import_litellm()
        scale_litellm_time(ctx.settings.window_s)
        self._router = router_for(ctx)

    async def main(self, ctx: RunContext) -> None:
        settings = ctx.settings
        tiers = ctx.tier_of()
        queue: asyncio.Queue[tuple[Article, int]] = asyncio.Queue()
        self.stats = {"errors": 0, "error_types": {}}
        feeder_done = asyncio.Event()

        def put(articles: Any) -> None:
            self.ledger.take(list(articles))
            for a in articles:
                queue.put_nowait((a, 0))

        async def feed() -> None:
            await feed_async(ctx, put)
            feeder_done.set()

        async def worker() -> None:
            while True:
                article, attempts = await queue.get()
                model = settings.tiers[tiers[article.id]].model
                served_by, error = await self._complete(model, article)
                if served_by is not None:
                    self.ledger.finish(ctx, article.id, True, served_by)
                else:
                    self.stats["errors"] += 1
                    types = self.stats["error_types"]
                    types[error] = types.get(error, 0) + 1
                    if attempts + 1 < MAX_ATTEMPTS:
                        queue.put_nowait((article, attempts + 1))
                    else:
                        self.ledger.finish(ctx, article.id, False, None)
                queue.task_done()

        feeder = asyncio.create_task(feed())
        workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
        try:
            await feeder_done.wait()
            await queue.join()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, feeder, return_exceptions=True)

    async def _complete(self, model: str, article: Article) -> tuple[str | None, str]:
        try:
            response = await self._router.acompletion(
                model=model,
                messages=[
                    {"role": "system", "content": SYSTEM_INSTRUCTION},
                    {"role": "user", "content": build_user_text([article])},
                ],
                max_tokens=8192,
                response_format={"type": "json_object"},
            )
        except Exception as exc:
            return None, type(exc).__name__
        choice = response.choices[0]
        parsed = analyse_answer(choice.message.content, None, None, [article.id])
        if isinstance(parsed.answers.get(article.id), Extraction):
            served: str = response.model or model
            return served.removeprefix("gemini/"), ""
        return None, "InvalidAnswer"
