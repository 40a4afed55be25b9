"""The configuration schema: plain frozen data, validated once at load time.

``parse_config`` (``policies.config_parsing``) turns the mapping read from
a TOML file (or built in code) into a ``Config`` and raises ``ConfigError``
naming the offending key and the problem. Reading files is an adapter's job
(``tierbatch.adapters.storage.config_file``).

Longer than the house's ~450 lines on purpose: every config type in one
place, so the schema reads top to bottom next to examples/tierbatch.toml.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Final

from tierbatch.policies.budget_config import BudgetConfig, OnExhausted
from tierbatch.policies.errors import (
    ConfigError,  # noqa: F401 (its old home)
    UnknownModelError,
)
from tierbatch.policies.grounding import GroundingAction, GroundingPolicy
from tierbatch.policies.task import TaskConfig


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model's quota and price. Limits are per project and per model.

    ``rpm`` requests per minute, ``tpm`` input tokens per minute, ``rpd``
    requests per Pacific day; 0 means unlimited. ``max_in_flight`` caps
    concurrent requests (0: unlimited). Prices are USD per million tokens:
    ``price_cached_per_m`` is for input tokens served from the (implicit)
    cache -- None: ``CACHED_PRICE_SHARE`` of the input price -- and
    ``price_thinking_per_m`` for thinking tokens -- None: the output price,
    as Gemini bills them.
    """

    name: str
    rpm: int
    tpm: int
    rpd: int
    max_in_flight: int = 0
    price_in_per_m: float = 0.0
    price_out_per_m: float = 0.0
    max_input_tokens: int = 1_000_000
    price_cached_per_m: float | None = None
    price_thinking_per_m: float | None = None

    @property
    def cached_price_per_m(self) -> float:
        if self.price_cached_per_m is not None:
            return self.price_cached_per_m
        return self.price_in_per_m * CACHED_PRICE_SHARE

    @property
    def thinking_price_per_m(self) -> float:
        if self.price_thinking_per_m is not None:
            return self.price_thinking_per_m
        return self.price_out_per_m


CACHED_PRICE_SHARE: Final = 0.1
"""What a cached input token costs as a share of an uncached one when a
model sets no ``price_cached_per_m``: Gemini 2.5 models bill implicitly
cached tokens at a tenth of the input price (check your model's price page)."""


class TierMode(StrEnum):
    """How a tier's articles reach the model (see ``policies.batch_routing``).

    ``interactive``: one call per pack, now; ``batch``: Gemini's Batch API
    (half price, up to a day); ``auto``: interactive while the dispatch
    plan finishes the tier's backlog within its ``max_latency_s``, the Batch
    API for what it cannot."""

    INTERACTIVE = "interactive"
    BATCH = "batch"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A tier: articles with priority >= ``min_priority`` (and below the tier
    above) -- or, with ``share``, the next ``share`` of recent articles by
    priority rank (``policies.shares``; ``min_priority`` is then unused) --
    are served by ``model`` then ``fallback_model`` then the global
    fallback. ``max_articles_per_request`` is how many articles one request
    may pack. ``fallback_patience_s``: how long a pack may hold out for its
    primary model. Within it, the pack waits for the primary when that frees
    in time, and takes a fallback only if no other tier's packs are waiting
    for that model as their own primary; after it, any model of the chain
    with room will do. 0: take whatever model has room first.
    ``adaptive_pack``: pack fewer articles while a model mixes them up
    (``policies.pack_quality``): the pack size halves, down to 1, when the
    share of cross-article entities passes ``grounding.cross_article_threshold``,
    and grows back one article at a time over clean requests."""

    name: str
    min_priority: float
    model: str
    fallback_model: str | None = None
    max_articles_per_request: int = 1
    fallback_patience_s: float = 0.0
    adaptive_pack: bool = False
    share: float | None = None
    mode: TierMode = TierMode.INTERACTIVE
    max_latency_s: float | None = None


class BatchFailure(StrEnum):
    """Where the articles of a batch job that failed, expired or was
    cancelled go: back to the queue (``queue``: leased again, and routed
    again), or straight to interactive calls (``interactive``)."""

    QUEUE = "queue"
    INTERACTIVE = "interactive"


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """The Batch API's side of the runtime (``[batch]``).

    ``poll_interval_s``: how often a job in flight is polled;
    ``collect_s``: how long articles routed to batch may wait for more to
    fill a job (a job goes out at once when it is full);
    ``max_requests_per_job``: requests (packs) per job; ``discount``: the
    share of the interactive price a batch token costs (Gemini: 0.5);
    ``on_job_failure``: see ``BatchFailure``; ``give_up_s``: a job not over
    this long after its creation is cancelled and its articles go back
    (Gemini expires jobs after 48 h). Cached and thinking tokens are
    priced as the model says (``ModelSpec.price_cached_per_m``, ...)."""

    poll_interval_s: float = 30.0
    collect_s: float = 60.0
    max_requests_per_job: int = 1000
    discount: float = 0.5
    on_job_failure: BatchFailure = BatchFailure.QUEUE
    give_up_s: float = 49 * 3600.0


@dataclass(frozen=True, slots=True)
class PriorityConfig:
    """Weights and constants of the priority formula (see policies.priority)."""

    hotness_weight: float = 0.6
    goodness_weight: float = 0.4
    size_weight: float = 0.5
    velocity_weight: float = 0.5
    half_life_s: float = 6 * 3600.0
    size_scale: float = 10.0
    velocity_window_s: float = 3600.0
    velocity_scale: float = 5.0
    default_goodness: float = 0.5
    domains: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ComposerConfig:
    """Batch composition: ``mix`` maps tier name -> slots per batch."""

    mix: Mapping[str, int]
    max_queued: int = 100_000
    aging_s: float = 600.0
    # How many recent priorities a tier ``share`` ranks over (policies.shares).
    share_window: int = 10_000

    @property
    def batch_size(self) -> int:
        return sum(self.mix.values())


class LimiterMode(StrEnum):
    """How the provider enforces a per-minute limit, as far as we know.

    ``auto``: unknown -- pace at the limit's rate with a burst allowance
    learnt from the provider's answers (it grows to a whole window against a
    rolling window and settles at the bucket's size against a token bucket);
    ``window``: a rolling window -- spend a whole window's quota at once."""

    AUTO = "auto"
    WINDOW = "window"


class ProviderLimiter(StrEnum):
    """How a provider enforces a per-minute limit -- what the simulated
    provider and the local Gemini-compatible server emulate.

    ``window``: a rolling window of ``window_s`` (a request counts while it
    is younger than the window); ``bucket``: a token bucket refilled at the
    limit's rate, holding ``bucket_s`` seconds' worth."""

    WINDOW = "window"
    BUCKET = "bucket"


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """``window_s`` is the rolling rate-limit window (Gemini: 60 s);
    ``margin_s`` widens it on our side to absorb clock and network jitter;
    ``utilisation`` scales every limit (1.0 = spend the whole quota);
    ``limiter`` is what the provider's limiter is assumed to be (see
    ``LimiterMode``); ``learn_limits``: a per-minute 429 below the configured
    limit lowers that model's effective limit to what the provider accepted,
    and clean windows raise it back (configured limits are ceilings);
    ``initial_burst`` is the share of a window's requests the first burst
    may take before the provider has answered any; ``plan``: dispatch by a
    plan over the whole backlog (how much of each model each tier may use,
    so that overflow never takes what a lower tier needs), not greedily.
    (``max_skew_s``, of
    older versions, is accepted in config files and ignored: the learnt
    burst took its place.)"""

    window_s: float = 60.0
    margin_s: float = 0.5
    utilisation: float = 1.0
    limiter: LimiterMode = LimiterMode.AUTO
    learn_limits: bool = True
    initial_burst: float = 0.25
    plan: bool = True
    timezone: str = "America/Los_Angeles"
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    server_error_threshold: int = 3


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Per-article budgets. ``max_attempts`` counts every call an article was
    part of (429s included); ``max_failures`` counts errors, timeouts and
    invalid answers; ``poison_after`` counts extractor crashes, and for the
    SQLite queue the leases that ended without a result (its daemon died)."""

    max_attempts: int = 10
    max_failures: int = 4
    poison_after: int = 3
    request_timeout_s: float = 60.0


class ProviderKind(StrEnum):
    AUTO = "auto"  # google-genai when an API key is set, else simulated
    GENAI = "genai"
    LEGACY = "legacy"  # google-generativeai (end of life 2025-11-30)
    SIMULATED = "simulated"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """How to reach the models. The API key itself is never stored here:
    ``api_key_env`` names the environment variables to read it from."""

    kind: ProviderKind = ProviderKind.AUTO
    base_url: str | None = None
    api_version: str = "v1beta"
    api_key_env: tuple[str, ...] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    max_output_tokens: int = 8192
    temperature: float = 0.0


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """Extractor pool shape. ``max_packs_in_flight`` is per extractor."""

    extractors: int = 4
    max_packs_in_flight: int = 64
    launch_stagger_s: float = 0.0
    max_input_tokens_per_request: int = 32_000


@dataclass(frozen=True, slots=True)
class SimulatedLimits:
    """The limits the simulated provider enforces for one model instead of
    the configured ones (None: the configured one)."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What the simulated provider (``provider.kind = "simulated"``, or
    ``auto`` without an API key) emulates. ``limiter``: how it enforces the
    per-minute limits, a rolling window of ``quota.window_s`` or a token
    bucket holding ``bucket_s`` seconds' worth (``ProviderLimiter``);
    ``models``: per model, the limits it really enforces when they differ
    from the configured ones -- lower, as when a config copies a higher
    tier's published limits, to rehearse the registry meeting 429s and
    learning the true limits."""

    limiter: ProviderLimiter = ProviderLimiter.WINDOW
    bucket_s: float = 10.0
    models: Mapping[str, SimulatedLimits] = field(default_factory=dict)

    def enforced(self, models: Mapping[str, ModelSpec]) -> dict[str, ModelSpec]:
        """``models`` with the simulated provider's own limits applied."""
        out = dict(models)
        for name, limits in self.models.items():
            spec = out.get(name)
            if spec is None:
                continue
            out[name] = ModelSpec(
                name=spec.name,
                rpm=spec.rpm if limits.rpm is None else limits.rpm,
                tpm=spec.tpm if limits.tpm is None else limits.tpm,
                rpd=spec.rpd if limits.rpd is None else limits.rpd,
                max_in_flight=spec.max_in_flight,
                price_in_per_m=spec.price_in_per_m,
                price_out_per_m=spec.price_out_per_m,
                max_input_tokens=spec.max_input_tokens,
            )
        return out


@dataclass(frozen=True, slots=True)
class GroundingConfig:
    """The grounding check of every answer (``policies.grounding``): what
    happens to an entity of each outcome (``keep``, ``flag``: keep it with
    its outcome as a flag, ``drop``), and when the share of cross-article
    entities is worth a warning: a model's share over its last
    ``window_requests`` requests of a tier above ``cross_article_threshold``
    (tiers with ``adaptive_pack`` then pack fewer articles)."""

    grounded: GroundingAction = GroundingAction.KEEP
    cross_article: GroundingAction = GroundingAction.DROP
    ungrounded: GroundingAction = GroundingAction.FLAG
    window_requests: int = 20
    cross_article_threshold: float = 0.05

    @property
    def policy(self) -> GroundingPolicy:
        return GroundingPolicy(self.grounded, self.cross_article, self.ungrounded)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. ``parse_config`` orders ``tiers`` highest
    first (by ``min_priority``; in a ladder with shares, as listed in the
    file), so the first tier an article's priority reaches is its tier."""

    models: Mapping[str, ModelSpec]
    tiers: tuple[TierSpec, ...]
    global_fallback: str
    composer: ComposerConfig
    priority: PriorityConfig = field(default_factory=PriorityConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)

    @property
    def uses_batch(self) -> bool:
        """Whether any tier may send work to the Batch API: by its mode, or
        moved there by the daily budget (``on_exhausted = "batch"``)."""
        return self.batch_by_budget or any(t.mode is not TierMode.INTERACTIVE for t in self.tiers)

    @property
    def batch_by_budget(self) -> bool:
        """Whether the daily budget may move tiers to the Batch API."""
        return self.budget.enabled and self.budget.on_exhausted is OnExhausted.BATCH

    def model(self, name: str) -> ModelSpec:
        """The quota and price of ``name``; a model the config does not know
        (say, one named in a 429 body) raises ``UnknownModelError``."""
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModelError(name, tuple(self.models)) from None


def parse_config(data: Mapping[str, Any]) -> Config:
    """``policies.config_parsing.parse_config``, where it was (imported on
    call: the parser imports this module)."""
    from tierbatch.policies.config_parsing import parse_config as parse

    return parse(data)


def ladder_order(tiers: Sequence[TierSpec]) -> tuple[TierSpec, ...]:
    """The tiers highest first: by ``min_priority`` (ties keep their order),
    or, in a ladder where any tier has a ``share``, as listed (a share has
    no threshold to sort by; ``parse_config`` checks the listed order)."""
    if any(tier.share is not None for tier in tiers):
        return tuple(tiers)
    return tuple(sorted(tiers, key=lambda t: -t.min_priority))


def config_to_mapping(config: Config) -> dict[str, Any]:
    """The resolved settings as plain TOML-shaped data (``None`` entries are
    left out, as TOML has no null); ``parse_config`` reads it back to an
    equal ``Config``. It never contains a secret: the config holds none."""
    provider = _flat(config.provider)
    provider["kind"] = config.provider.kind.value
    provider["api_key_env"] = list(config.provider.api_key_env)
    priority = _flat(config.priority)
    priority["domains"] = dict(config.priority.domains)
    return {
        "global_fallback": config.global_fallback,
        "models": {
            name: {k: v for k, v in _flat(spec).items() if k != "name"}
            for name, spec in config.models.items()
        },
        "tiers": [{**_tier_mapping(tier), "mode": tier.mode.value} for tier in config.tiers],
        "composer": {
            "mix": dict(config.composer.mix),
            "max_queued": config.composer.max_queued,
            "aging_s": config.composer.aging_s,
            "share_window": config.composer.share_window,
        },
        "priority": priority,
        "quota": _flat(config.quota),
        "retry": _flat(config.retry),
        "provider": provider,
        "runtime": _flat(config.runtime),
        "simulation": {
            "limiter": config.simulation.limiter.value,
            "bucket_s": config.simulation.bucket_s,
            "models": {name: _flat(limits) for name, limits in config.simulation.models.items()},
        },
        "grounding": _flat(config.grounding),
        "batch": {**_flat(config.batch), "on_job_failure": config.batch.on_job_failure.value},
        "budget": {
            "usd_per_day": config.budget.usd_per_day,
            "on_exhausted": config.budget.on_exhausted.value,
            "output_ratio": config.budget.output_ratio,
            "tiers": dict(config.budget.tiers),
        },
        "task": {
            "instructions": config.task.instructions,
            "allow_mixed_versions": config.task.allow_mixed_versions,
            "entity_types": [
                {"name": t.name, "description": t.description} for t in config.task.entity_types
            ],
            "extra_fields": [
                {"name": f.name, "type": f.type.value, "description": f.description}
                for f in config.task.extra_fields
            ],
        },
    }


def _tier_mapping(tier: TierSpec) -> dict[str, Any]:
    """A tier as the file writes it: a share tier has no ``min_priority``."""
    flat = _flat(tier)
    if tier.share is not None:
        del flat["min_priority"]
    return flat


def _flat(obj: Any) -> dict[str, Any]:
    """A flat dataclass's fields, without the ``None`` ones."""
    values = ((f.name, getattr(obj, f.name)) for f in fields(obj))
    return {name: value for name, value in values if value is not None}
