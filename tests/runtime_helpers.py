"""Shared builders for runtime tests: small configs, articles, fake providers
and an observer that records every registry decision."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from tierbatch.actors.ports import ExtractionRequest, PackAnswer
from tierbatch.policies.articles import Article
from tierbatch.policies.config import (
    ComposerConfig,
    Config,
    ModelSpec,
    PriorityConfig,
    QuotaConfig,
    RetryConfig,
    RuntimeConfig,
    TierSpec,
)
from tierbatch.policies.outcomes import CallOutcome, Succeeded, Usage
from tierbatch.policies.quota import Grant
from tierbatch.policies.results import Entity, EntityType, Extraction

PRO, FLASH, LITE = "pro", "flash", "lite"


def small_config(
    *,
    pro: tuple[int, int, int] = (30, 200_000, 0),
    flash: tuple[int, int, int] = (60, 400_000, 0),
    lite: tuple[int, int, int] = (120, 800_000, 0),
    max_queued: int = 100_000,
    extractors: int = 4,
    max_packs: int = 64,
    retry: RetryConfig | None = None,
    quota: QuotaConfig | None = None,
    per_request: tuple[int, int, int] = (4, 6, 10),
    aging_s: float = 600.0,
) -> Config:
    """Three tiers over three models, limits as (rpm, tpm, rpd)."""
    models = {
        name: ModelSpec(name, rpm, tpm, rpd, price_in_per_m=1.0, price_out_per_m=2.0)
        for name, (rpm, tpm, rpd) in ((PRO, pro), (FLASH, flash), (LITE, lite))
    }
    tiers = (
        TierSpec("hot", 0.66, PRO, FLASH, per_request[0]),
        TierSpec("warm", 0.33, FLASH, LITE, per_request[1]),
        TierSpec("cold", 0.0, LITE, None, per_request[2]),
    )
    return Config(
        models=models,
        tiers=tiers,
        global_fallback=LITE,
        composer=ComposerConfig(
            mix={"hot": 4, "warm": 6, "cold": 10}, max_queued=max_queued, aging_s=aging_s
        ),
        priority=PriorityConfig(
            hotness_weight=0.0,
            goodness_weight=1.0,
            domains={"hot.example": 0.9, "warm.example": 0.5, "cold.example": 0.1},
        ),
        quota=quota or QuotaConfig(),
        retry=retry or RetryConfig(request_timeout_s=60.0),
        runtime=RuntimeConfig(extractors=extractors, max_packs_in_flight=max_packs),
    )


def make_articles(n: int, seed: int = 7, prefix: str = "a") -> list[Article]:
    """``n`` articles, deterministic, spread over the tiers as news is: about
    10% hot, 30% warm, 60% cold (by domain goodness)."""
    rng = random.Random(seed)
    base = datetime(2026, 11, 27, 12, tzinfo=UTC)
    domains = ["hot.example"] + ["warm.example"] * 3 + ["cold.example"] * 6
    out = []
    for i in range(n):
        words = rng.randint(40, 160)
        text = " ".join(
            rng.choice(["Paris", "Acme Corp", "Maria Lopez", "said", "the", "summit", "on"])
            for _ in range(words)
        )
        out.append(
            Article(
                id=f"{prefix}{i}",
                text=text,
                title=f"Title {i}",
                domain=rng.choice(domains),
                cluster_id=f"c{i % 17}",
                published_at=base + timedelta(minutes=i % 90),
            )
        )
    return out


Handler = Callable[[ExtractionRequest], Awaitable[PackAnswer]]


class ScriptedProvider:
    """A provider whose answer to each request is decided by a test function;
    by default every article succeeds with one entity."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler or ok_answer
        self.requests: list[ExtractionRequest] = []
        self.closed = False

    async def extract(self, request: ExtractionRequest) -> PackAnswer:
        self.requests.append(request)
        return await self.handler(request)

    async def aclose(self) -> None:
        self.closed = True


async def ok_answer(request: ExtractionRequest) -> PackAnswer:
    return answer_all(request)


def answer_all(request: ExtractionRequest, outcome: CallOutcome | None = None) -> PackAnswer:
    entity = Entity("Acme Corp", EntityType.ORGANISATION, 0.8, 1)
    return PackAnswer(
        outcome or Succeeded(Usage(request.est_input_tokens, 50 * len(request.articles))),
        {a.id: Extraction((entity,)) for a in request.articles},
    )


class Gate:
    """An asyncio-side gate that a test opens from its own thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def open(self) -> None:
        with self._lock:
            self._opened = True
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        with self._lock:
            if self._opened:
                return
            event = asyncio.Event()
            self._waiters.append((asyncio.get_running_loop(), event))
        await event.wait()


@dataclass
class RecordingObserver:
    """Records grants and cooldowns exactly as the registry decided them."""

    grants: list[tuple[Grant, int]] = field(default_factory=list)
    sent: dict[int, float] = field(default_factory=dict)
    # Every grant and send, in the order the registry made them known.
    events: list[tuple[str, Grant | int, float]] = field(default_factory=list)
    cooldowns: list[tuple[str, float, float, str]] = field(default_factory=list)
    outcomes: list[tuple[str, CallOutcome, float]] = field(default_factory=list)

    def on_grant(self, grant: Grant, tier_rank: int) -> None:
        self.grants.append((grant, tier_rank))
        self.events.append(("grant", grant, float(tier_rank)))

    def on_sent(self, grant_id: int, model: str, at: float) -> None:
        self.sent[grant_id] = at
        self.events.append(("sent", grant_id, at))

    def counted_at(self, grant: Grant) -> float:
        """When the registry's window counts the grant from."""
        return max(grant.granted_at, self.sent.get(grant.grant_id, grant.granted_at))

    def on_outcome(self, model: str, outcome: CallOutcome, at: float) -> None:
        self.outcomes.append((model, outcome, at))

    def on_cooldown(self, model: str, start: float, until: float, reason: str) -> None:
        self.cooldowns.append((model, start, until, reason))


def with_models(config: Config, models: Mapping[str, ModelSpec]) -> Config:
    return replace(config, models=dict(models))
