"""The OpenAI cookbook's parallel request processor, reimplemented for Gemini.

The algorithm of ``api_request_parallel_processor.py`` (openai-cookbook,
"How to handle rate limits"), kept as it is:

* one request at a time is taken from the input (retries first, from the
  retry queue) and waits -- blocking every request behind it -- until the
  capacity of its limits allows it;
* capacity is two token buckets, requests and tokens, that refill
  continuously at the per-minute limit and start full;
* each call runs as its own task; a failed call goes back to the retry queue
  while it has attempts left (``max_attempts = 5``), else the request fails;
* after a rate-limit error, everything pauses until 15 s have passed since
  the last one (``seconds_to_pause_after_rate_limit_error``);
* the main loop sleeps 1 ms per turn (``seconds_to_sleep_each_loop``).

For Gemini: limits are per model, so there is one pair of buckets per model,
set to the model's full quota (the cookbook's own defaults spend only half);
a request's token consumption is its input tokens (Gemini counts input
tokens per minute); each request goes to its tier's model -- the cookbook
has no fallback. A daemon keeps the loop alive while more articles may
arrive. Times are scaled: the buckets refill over the bench's window and
the pause lasts ``15 * W / 60``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bench.baselines.common import AsyncBaseline, GeminiCaller
from bench.corpus import prompt_tokens
from bench.harness import RunContext, feed_async
from tierbatch.policies.articles import Article
from tierbatch.policies.outcomes import RateLimited

MAX_ATTEMPTS = 5
PAUSE_AFTER_RATE_LIMIT_S = 15.0
SLEEP_EACH_LOOP_S = 0.001


@dataclass
class StatusTracker:
    num_tasks_started: int = 0
    num_tasks_in_progress: int = 0
    num_tasks_succeeded: int = 0
    num_tasks_failed: int = 0
    num_rate_limit_errors: int = 0
    num_api_errors: int = 0
    time_of_last_rate_limit_error: float = 0.0


@dataclass
class APIRequest:
    task_id: int
    article: Article
    model: str
    token_consumption: int
    attempts_left: int
    result: list[str] = field(default_factory=list)

    async def call_api(
        self,
        caller: GeminiCaller,
        retry_queue: asyncio.Queue[APIRequest],
        status: StatusTracker,
        on_done: Any,
    ) -> None:
        outcome, ok = await caller.call(self.model, self.article)
        if not ok:
            self.result.append(type(outcome).__name__)
            if isinstance(outcome, RateLimited):
                status.time_of_last_rate_limit_error = time.time()
                status.num_rate_limit_errors += 1
            else:
                status.num_api_errors += 1
            if self.attempts_left:
                retry_queue.put_nowait(self)
            else:
                status.num_tasks_in_progress -= 1
                status.num_tasks_failed += 1
                on_done(self, False)
        else:
            status.num_tasks_in_progress -= 1
            status.num_tasks_succeeded += 1
            on_done(self, True)


class OpenAIParallelSystem(AsyncBaseline):
    async def main(self, ctx: RunContext) -> None:
        settings = ctx.settings
        window = settings.window_s
        pause = settings.real(PAUSE_AFTER_RATE_LIMIT_S)
        tiers = ctx.tier_of()
        caller = GeminiCaller(ctx)
        self._caller = caller
        status = StatusTracker()
        self._status = status
        retry_queue: asyncio.Queue[APIRequest] = asyncio.Queue()
        task_ids = itertools.count()
        arrived: deque[Article] = deque()
        calls: set[asyncio.Task[None]] = set()

        def put(articles: Any) -> None:
            self.ledger.take(list(articles))
            arrived.extend(articles)

        feeder = asyncio.create_task(feed_async(ctx, put))

        def on_done(request: APIRequest, ok: bool) -> None:
            self.ledger.finish(ctx, request.article.id, ok, request.model if ok else None)

        limits = {m.name: (float(m.rpm), float(m.tpm)) for m in settings.models}
        available_request_capacity = {m: rpm for m, (rpm, _tpm) in limits.items()}
        available_token_capacity = {m: tpm for m, (_rpm, tpm) in limits.items()}
        last_update_time = time.time()
        next_request: APIRequest | None = None
        file_not_finished = True

        while True:
            if next_request is None:
                if not retry_queue.empty():
                    next_request = retry_queue.get_nowait()
                elif file_not_finished:
                    if arrived:
                        article = arrived.popleft()
                        next_request = APIRequest(
                            task_id=next(task_ids),
                            article=article,
                            model=settings.tiers[tiers[article.id]].model,
                            token_consumption=prompt_tokens((article,)),
                            attempts_left=MAX_ATTEMPTS,
                        )
                        status.num_tasks_started += 1
                        status.num_tasks_in_progress += 1
                    elif feeder.done():
                        file_not_finished = False

            current_time = time.time()
            elapsed = current_time - last_update_time
            for model, (rpm, tpm) in limits.items():
                available_request_capacity[model] = min(
                    available_request_capacity[model] + rpm * elapsed / window, rpm
                )
                available_token_capacity[model] = min(
                    available_token_capacity[model] + tpm * elapsed / window, tpm
                )
            last_update_time = current_time

            if next_request is not None:
                model = next_request.model
                if (
                    available_request_capacity[model] >= 1
                    and available_token_capacity[model] >= next_request.token_consumption
                ):
                    available_request_capacity[model] -= 1
                    available_token_capacity[model] -= next_request.token_consumption
                    next_request.attempts_left -= 1
                    call = asyncio.create_task(
                        next_request.call_api(caller, retry_queue, status, on_done)
                    )
                    calls.add(call)
                    call.add_done_callback(calls.discard)
                    next_request = None

            if status.num_tasks_in_progress == 0 and not file_not_finished:
                break

            await asyncio.sleep(SLEEP_EACH_LOOP_S)

            since_rate_limit = time.time() - status.time_of_last_rate_limit_error
            if since_rate_limit < pause:
                await asyncio.sleep(pause - since_rate_limit)

    async def close(self) -> None:
        status = getattr(self, "_status", None)
        if status is not None:
            self.stats = {
                "started": status.num_tasks_started,
                "succeeded": status.num_tasks_succeeded,
                "failed": status.num_tasks_failed,
                "rate_limit_errors": status.num_rate_limit_errors,
                "api_errors": status.num_api_errors,
            }
        caller = getattr(self, "_caller", None)
        if caller is not None:
            await caller.aclose()
