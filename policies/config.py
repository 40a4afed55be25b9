"""The configuration schema: plain frozen data, validated once at load time.

``parse_config`` turns the mapping read from a TOML file (or built in code)
into a ``Config`` and raises ``ConfigError`` naming the offending key and the
problem. Reading files is an adapter's job (``tierbatch.adapters.config_file``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or inconsistent.

    ``key`` is the dotted path of the offending entry (``tiers[1].model``).
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model's quota and price. Limits are per project and per model.

    ``rpm`` requests per minute, ``tpm`` input tokens per minute, ``rpd``
    requests per Pacific day; 0 means unlimited. ``max_in_flight`` caps
    concurrent requests (0: unlimited). Prices are USD per million tokens.
    """

    name: str
    rpm: int
    tpm: int
    rpd: int
    max_in_flight: int = 0
    price_in_per_m: float = 0.0
    price_out_per_m: float = 0.0
    max_input_tokens: int = 1_000_000


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A tier: articles with priority >= ``min_priority`` (and below the tier
    above) are served by ``model`` then ``fallback_model`` then the global
    fallback. ``max_articles_per_request`` is how many articles one request
    may pack."""

    name: str
    min_priority: float
    model: str
    fallback_model: str | None = None
    max_articles_per_request: int = 1


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

    @property
    def batch_size(self) -> int:
        return sum(self.mix.values())


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """``window_s`` is the rolling rate-limit window (Gemini: 60 s);
    ``margin_s`` widens it on our side to absorb clock and network jitter;
    ``utilisation`` scales every limit (1.0 = spend the whole quota)."""

    window_s: float = 60.0
    margin_s: float = 0.5
    utilisation: float = 1.0
    timezone: str = "America/Los_Angeles"
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    server_error_threshold: int = 3


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Per-article budgets. ``max_attempts`` counts every call an article was
    part of (429s included); ``max_failures`` counts errors, timeouts and
    invalid answers; ``poison_after`` counts extractor crashes."""

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
class Config:
    models: Mapping[str, ModelSpec]
    tiers: tuple[TierSpec, ...]
    global_fallback: str
    composer: ComposerConfig
    priority: PriorityConfig = field(default_factory=PriorityConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
