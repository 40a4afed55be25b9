"""Issue 15's target, measured in-process: the registry's estimator
(``quota.limiter = "auto"``) against a provider that enforces its per-minute
limits as token buckets (refilled at the limit's rate, holding ``bucket_s``
seconds' worth) -- and, for comparison, as a rolling window.

    python -m bench.bucket [--speed 10] [--articles 800] [--shape bucket|window|both]

The workload is the issue's: 800 articles, one per request, three tiers
(hot [pro, flash, lite], warm [flash, lite], cold [lite]; about 10/30/60%),
pro 20, flash 60, lite 120 requests a minute, tokens never binding. The
simulated provider runs on a ``ScaledClock`` (one quota minute in
``60 / speed`` real seconds), so the figures are in quota seconds.

Reported per shape: requests and 429s (all, and after the first minute),
the accepted rate after the first minute as a share of the sustained bound
(the sum of the models' rates: 200 a minute), and the makespan against the
finite bound (``(articles - what the full buckets admit at once) / rate``
for buckets; whole windows for the rolling window).
Targets (bucket, 10 s): >= 95% of the sustained bound, <= 1% 429s after the
first minute.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from typing import Any

from bench.logs import quiet_logs
from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.adapters.simulation.simulated import SimulatedCall, SimulatedProvider
from tierbatch.policies.articles import Article
from tierbatch.policies.config import (
    ComposerConfig,
    Config,
    ModelSpec,
    PriorityConfig,
    ProviderLimiter,
    QuotaConfig,
    RetryConfig,
    RuntimeConfig,
    TierSpec,
)

WINDOW_S = 60.0
RPM = {"pro": 20, "flash": 60, "lite": 120}
DOMAINS = {"hot.example": 0.9, "warm.example": 0.5, "cold.example": 0.1}


def bucket_config() -> Config:
    """The issue's quotas and tiers, one article per request, tokens ample."""
    models = {name: ModelSpec(name, rpm, 10_000_000, 0) for name, rpm in RPM.items()}
    tiers = (
        TierSpec("hot", 0.66, "pro", "flash", 1),
        TierSpec("warm", 0.33, "flash", "lite", 1),
        TierSpec("cold", 0.0, "lite", None, 1),
    )
    return Config(
        models=models,
        tiers=tiers,
        global_fallback="lite",
        composer=ComposerConfig(mix={"hot": 4, "warm": 6, "cold": 10}, max_queued=100_000),
        priority=PriorityConfig(hotness_weight=0.0, goodness_weight=1.0, domains=DOMAINS),
        quota=QuotaConfig(window_s=WINDOW_S),
        retry=RetryConfig(request_timeout_s=60.0),
        runtime=RuntimeConfig(extractors=4, max_packs_in_flight=64),
    )


def bench_articles(n: int) -> list[Article]:
    """``n`` articles, about 10% hot, 30% warm, 60% cold, deterministic."""
    domains = ["hot.example"] + ["warm.example"] * 3 + ["cold.example"] * 6
    return [
        Article(
            id=f"b{i:05d}",
            url=f"https://{domains[i % 10]}/{i}",
            title=f"Story {i}",
            text=f"Body of story {i}. " * 20,
            domain=domains[i % 10],
        )
        for i in range(n)
    ]


def run_shape(
    shape: ProviderLimiter,
    *,
    articles: int = 800,
    speed: float = 10.0,
    bucket_s: float = 10.0,
    config: Config | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    """One run of the workload against ``shape``; its figures."""
    config = config or bucket_config()
    clock = ScaledClock(speed)
    provider = SimulatedProvider(
        config.models,
        clock,
        seed=seed,
        window_s=WINDOW_S,
        latency_s=0.5,
        latency_per_article_s=0.0,
        limiter=shape,
        bucket_s=bucket_s,
    )
    sink = CollectingSink()
    items = bench_articles(articles)
    with Runtime(config, provider, sink, clock=clock) as runtime:
        t0 = clock.now()
        runtime.submit(items)
        finished = runtime.drain(timeout=30 * WINDOW_S / speed + 60)
        end = clock.now()
        learnt = runtime.stats()
    return figures(shape, provider.calls, t0, end, articles, bucket_s, finished) | {
        "speed": speed,
        "done": sum(1 for r in sink.results if type(r).__name__ == "Done"),
        "fallbacks": learnt.fallbacks,
    }


def figures(
    shape: ProviderLimiter,
    calls: list[SimulatedCall],
    t0: float,
    end: float,
    articles: int,
    bucket_s: float,
    finished: bool,
) -> dict[str, Any]:
    rate_per_s = sum(RPM.values()) / WINDOW_S
    limited = [c for c in calls if c.outcome == "rate_limited"]
    after = [c for c in calls if c.started_at - t0 >= WINDOW_S]
    limited_after = [c for c in after if c.outcome == "rate_limited"]
    accepted = sorted(c.started_at - t0 for c in calls if c.outcome != "rate_limited")
    last = accepted[-1] if accepted else 0.0
    steady = [t for t in accepted if t >= WINDOW_S]
    span = last - WINDOW_S
    steady_rate = len(steady) / span if span > 0 else math.nan
    if shape is ProviderLimiter.BUCKET:
        at_once = sum(max(1.0, rpm / WINDOW_S * bucket_s) for rpm in RPM.values())
        bound = max(0.0, articles - at_once) / rate_per_s
    else:
        windows = math.ceil(articles / sum(RPM.values())) - 1
        bound = windows * WINDOW_S
    by_model: dict[str, dict[str, int]] = {}
    for c in calls:
        entry = by_model.setdefault(c.model, {"requests": 0, "429s": 0})
        entry["requests"] += 1
        entry["429s"] += c.outcome == "rate_limited"
    return {
        "shape": shape.value,
        "finished": finished,
        "requests": len(calls),
        "429s": len(limited),
        "429_share": len(limited) / len(calls) if calls else 0.0,
        "requests_after_first_minute": len(after),
        "429s_after_first_minute": len(limited_after),
        "429_share_after_first_minute": len(limited_after) / len(after) if after else 0.0,
        "steady_rate_per_min": steady_rate * WINDOW_S,
        "sustained_bound_per_min": rate_per_s * WINDOW_S,
        "share_of_sustained_bound": steady_rate / rate_per_s,
        "last_request_s": last,
        "bound_s": bound,
        "share_of_finite_bound": bound / last if last > 0 else math.nan,
        "wall_s": end - t0,
        "by_model": by_model,
    }


def main() -> None:
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=float, default=10.0)
    parser.add_argument("--articles", type=int, default=800)
    parser.add_argument("--bucket-s", type=float, default=10.0)
    parser.add_argument("--shape", choices=("bucket", "window", "both"), default="both")
    parser.add_argument("--limiter", choices=("auto", "window"), default="auto")
    args = parser.parse_args()
    shapes = (
        (ProviderLimiter.BUCKET, ProviderLimiter.WINDOW)
        if args.shape == "both"
        else (ProviderLimiter(args.shape),)
    )
    config = bucket_config()
    from tierbatch.policies.config import LimiterMode

    config = replace(config, quota=replace(config.quota, limiter=LimiterMode(args.limiter)))
    for shape in shapes:
        result = run_shape(
            shape, articles=args.articles, speed=args.speed, bucket_s=args.bucket_s, config=config
        )
        print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
