"""The configuration schema: plain frozen data, validated once at load time.

``parse_config`` turns the mapping read from a TOML file (or built in code)
into a ``Config`` and raises ``ConfigError`` naming the offending key and the
problem. Reading files is an adapter's job (``tierbatch.adapters.storage.config_file``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tierbatch.policies.articles import normalise_domain
from tierbatch.policies.budget_config import BudgetConfig, parse_budget
from tierbatch.policies.config_reader import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    REQUIRED,
    UNIT,
    Problems,
    Range,
    TableReader,
    did_you_mean,
    join_key,
)
from tierbatch.policies.grounding import GroundingAction, GroundingPolicy
from tierbatch.policies.task import TaskConfig, parse_task


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or inconsistent.

    ``key`` is the dotted path of the offending entry (``tiers[1].model``);
    an empty key means the file as a whole (missing, unreadable, bad TOML).
    ``source`` names the file when the config came from one. ``more`` holds
    further ``(key, problem)`` pairs found in the same pass, so a user fixes
    every mistake in one round instead of one per run; ``str()`` lists them
    all, one per line.
    """

    def __init__(
        self,
        key: str,
        problem: str,
        source: str | None = None,
        more: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        self.more = tuple(more)
        super().__init__("\n".join(self._line(k, p) for k, p in self.problems))

    @property
    def problems(self) -> tuple[tuple[str, str], ...]:
        """Every ``(key, problem)`` pair, the first one being ``key``/``problem``."""
        return ((self.key, self.problem), *self.more)

    def in_source(self, source: str) -> ConfigError:
        """The same error, attributed to the file ``source``."""
        return ConfigError(self.key, self.problem, source, self.more)

    def _line(self, key: str, problem: str) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{key}: {problem}" if key else f"{where}{problem}"

    def __reduce__(
        self,
    ) -> tuple[type[ConfigError], tuple[str, str, str | None, tuple[tuple[str, str], ...]]]:
        return (ConfigError, (self.key, self.problem, self.source, self.more))


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
        """Whether any tier may send work to the Batch API."""
        return any(t.mode is not TierMode.INTERACTIVE for t in self.tiers)

    def model(self, name: str) -> ModelSpec:
        """The quota and price of ``name``; a model the config does not know
        (say, one named in a 429 body) raises ``UnknownModelError``."""
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModelError(name, tuple(self.models)) from None


class UnknownModelError(KeyError):
    """A model name that has no ``[models."NAME"]`` table in the config."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"no model {self.name!r} in the config; models: {', '.join(self.known)}"


API_VERSIONS: Final = ("v1", "v1beta", "v1alpha")
"""The REST API versions the Gemini SDKs accept."""

_API_KEY_REFUSAL: Final = (
    "API keys must not be stored in config files (they leak into backups, repositories "
    "and the resolved-settings output); set the key in an environment variable named in "
    "provider.api_key_env (default: GEMINI_API_KEY or GOOGLE_API_KEY)"
)
_NO_MODEL: Final = ModelSpec(name="", rpm=0, tpm=0, rpd=0)
_NO_TIER: Final = TierSpec(name="", min_priority=0.0, model="")
_NO_COMPOSER: Final = ComposerConfig(mix={})
_ENV_NAME_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Builds a validated ``Config`` from plain data laid out as the TOML file.

    Every problem in ``data`` is collected; the ``ConfigError`` raised names
    the first one's key and lists them all. Omitted sections and keys take
    the dataclass defaults; ``models``, ``tiers``, ``global_fallback`` and
    ``composer.mix`` are required.
    """
    problems = Problems()
    root = TableReader(data, "", problems)
    global_fallback = root.string("global_fallback", REQUIRED)
    models = _parse_models(root)
    tiers = _parse_tiers(root)
    composer = _parse_composer(root.table("composer"), ladder_order([t for _, t in tiers]))
    priority = _parse_priority(root.table("priority"))
    quota = _parse_quota(root.table("quota"))
    retry = _parse_retry(root.table("retry"))
    provider = _parse_provider(root.table("provider"))
    runtime = _parse_runtime(root.table("runtime"))
    simulation = _parse_simulation(root.table("simulation"), models)
    grounding = _parse_grounding(root.table("grounding"))
    batch = _parse_batch(root.table("batch"))
    budget = parse_budget(root.table("budget"), [t.name for _, t in tiers if t.name])
    task = parse_task(root.table("task"))
    root.refuse("api_key", _API_KEY_REFUSAL)
    root.finish()
    if models:
        _check_model_names(global_fallback, tiers, models, problems)
    if problems:
        first, *rest = problems
        raise ConfigError(first.key, first.problem, more=[(p.key, p.problem) for p in rest])
    return Config(
        models=models,
        tiers=ladder_order([t for _, t in tiers]),
        global_fallback=global_fallback,
        composer=composer,
        priority=priority,
        quota=quota,
        retry=retry,
        provider=provider,
        runtime=runtime,
        simulation=simulation,
        grounding=grounding,
        batch=batch,
        budget=budget,
        task=task,
    )


def _parse_models(root: TableReader) -> dict[str, ModelSpec]:
    raw = root.raw("models")
    if raw is REQUIRED:
        root.problems.add(
            "models", 'missing; expected one [models."NAME"] table per model (rpm, tpm, rpd, ...)'
        )
        return {}
    table = TableReader(raw, "models", root.problems)
    models: dict[str, ModelSpec] = {}
    entries = list(table.entries())
    if isinstance(raw, Mapping) and not entries:
        root.problems.add("models", 'expected at least one [models."NAME"] table')
    for name, spec in entries:
        key = join_key("models", name)
        if not name.strip():
            root.problems.add(key, "a model name must not be empty")
            continue
        if not isinstance(spec, Mapping):
            root.problems.add(key, "expected a table of rpm, tpm, rpd, ...")
            continue
        r = TableReader(spec, key, root.problems)
        models[name] = ModelSpec(
            name=name,
            rpm=r.integer("rpm", REQUIRED),
            tpm=r.integer("tpm", REQUIRED),
            rpd=r.integer("rpd", REQUIRED),
            max_in_flight=r.integer("max_in_flight", _NO_MODEL.max_in_flight),
            price_in_per_m=r.number("price_in_per_m", _NO_MODEL.price_in_per_m),
            price_out_per_m=r.number("price_out_per_m", _NO_MODEL.price_out_per_m),
            max_input_tokens=r.integer(
                "max_input_tokens", _NO_MODEL.max_input_tokens, AT_LEAST_ONE
            ),
            price_cached_per_m=_optional_number(r, "price_cached_per_m"),
            price_thinking_per_m=_optional_number(r, "price_thinking_per_m"),
        )
        r.finish()
    return models


def _optional_number(r: TableReader, name: str) -> float | None:
    """A number >= 0, or None when absent (TOML has no null)."""
    return r.number(name, 0.0) if r.has(name) else None


_SHARE: Final = Range(above=0, max=1)


def ladder_order(tiers: Sequence[TierSpec]) -> tuple[TierSpec, ...]:
    """The tiers highest first: by ``min_priority`` (ties keep their order),
    or, in a ladder where any tier has a ``share``, as listed (a share has
    no threshold to sort by; ``parse_config`` checks the listed order)."""
    if any(tier.share is not None for tier in tiers):
        return tuple(tiers)
    return tuple(sorted(tiers, key=lambda t: -t.min_priority))


def _parse_tiers(root: TableReader) -> list[tuple[int, TierSpec]]:
    """The tiers with their index in the file, for error keys."""
    raw = root.raw("tiers")
    problems = root.problems
    if raw is REQUIRED or (isinstance(raw, list) and not raw):
        problems.add(
            "tiers", "expected at least one [[tiers]] entry (name, min_priority or share, model)"
        )
        return []
    if not isinstance(raw, list):
        problems.add("tiers", "expected an array of tables: write each tier as [[tiers]]")
        return []
    with_shares = any(isinstance(item, Mapping) and "share" in item for item in raw)
    tiers: list[tuple[int, TierSpec]] = []
    names: dict[str, int] = {}
    thresholds: dict[float, int] = {}
    for index, item in enumerate(raw):
        key = f"tiers[{index}]"
        if not isinstance(item, Mapping):
            problems.add(key, "expected a table (name, min_priority or share, model, ...)")
            continue
        r = TableReader(item, key, problems)
        name = r.string("name", REQUIRED)
        before = len(problems)
        lowest = index == len(raw) - 1
        min_priority, share = _tier_rank(r, key, lowest=lowest, with_shares=with_shares)
        threshold_ok = len(problems) == before and share is None and r.has("min_priority")
        tier = TierSpec(
            name=name,
            min_priority=min_priority,
            model=r.string("model", REQUIRED),
            fallback_model=r.optional_string("fallback_model"),
            max_articles_per_request=r.integer(
                "max_articles_per_request", _NO_TIER.max_articles_per_request, AT_LEAST_ONE
            ),
            fallback_patience_s=r.number(
                "fallback_patience_s", _NO_TIER.fallback_patience_s, NON_NEGATIVE
            ),
            adaptive_pack=r.boolean("adaptive_pack", _NO_TIER.adaptive_pack),
            share=share,
            mode=TierMode(r.choice("mode", _NO_TIER.mode.value, _MODES)),
            max_latency_s=_optional_positive(r, "max_latency_s"),
        )
        r.finish()
        if tier.mode is TierMode.AUTO and tier.max_latency_s is None:
            problems.add(
                f"{key}.max_latency_s",
                "missing: mode = 'auto' sends the tier's backlog to the Batch API when the "
                "interactive quota cannot finish it within max_latency_s seconds; set it "
                "(e.g. max_latency_s = 3600)",
            )
        if name and name in names:
            problems.add(f"{key}.name", f"duplicate tier name {name!r} (tiers[{names[name]}])")
        elif name:
            names[name] = index
        if threshold_ok and min_priority in thresholds and not (with_shares and lowest):
            problems.add(
                f"{key}.min_priority",
                f"same min_priority as tiers[{thresholds[min_priority]}] ({min_priority}); "
                "thresholds must differ so every priority maps to exactly one tier",
            )
        elif threshold_ok and with_shares and not lowest:
            higher = [i for t, i in thresholds.items() if t < min_priority]
            if higher:
                problems.add(
                    f"{key}.min_priority",
                    f"{min_priority} is above tiers[{higher[0]}].min_priority; in a ladder "
                    "with shares the tiers are listed highest first, so thresholds must "
                    "fall down the list",
                )
            thresholds[min_priority] = index
        elif threshold_ok:
            thresholds[min_priority] = index
        tiers.append((index, tier))
    if with_shares:
        _check_share_sum(tiers, problems)
    return tiers


_MODES: Final = tuple(m.value for m in TierMode)


def _optional_positive(r: TableReader, name: str) -> float | None:
    """A number > 0, or None when the key is absent."""
    if not r.has(name):
        return None
    return r.number(name, REQUIRED, POSITIVE)


def _tier_rank(
    r: TableReader, key: str, *, lowest: bool, with_shares: bool
) -> tuple[float, float | None]:
    """A tier's ``(min_priority, share)``: exactly one of the two is set,
    except the lowest tier of a ladder with shares, which takes the rest
    (any ``min_priority`` it has is unused: the lowest tier catches all)."""
    has_min, has_share = r.has("min_priority"), r.has("share")
    if has_min and has_share:
        r.raw("share")
        r.raw("min_priority")
        r.problems.add(
            f"{key}.share",
            "a tier takes either min_priority (a threshold) or share (a fraction of the "
            "articles), not both",
        )
        return 0.0, None
    if has_share:
        share = r.number("share", REQUIRED, _SHARE)
        if lowest:
            r.problems.add(
                f"{key}.share",
                "the lowest tier takes the rest (1 minus the other tiers' shares); "
                "remove its share",
            )
            return 0.0, None
        return 0.0, share
    if has_min or not (with_shares and lowest):
        what = "a number in [0, 1] (a threshold), or share = a fraction in (0, 1]"
        if not has_min:
            r.raw("min_priority")
            r.problems.add(f"{key}.min_priority", f"missing; expected {what}")
            return 0.0, None
        return r.number("min_priority", REQUIRED, UNIT), None
    return 0.0, None


def _check_share_sum(tiers: list[tuple[int, TierSpec]], problems: Problems) -> None:
    """The shares leave the lowest tier the rest: they add up to at most 1."""
    total = 0.0
    parts: list[str] = []
    for index, tier in tiers:
        if tier.share is None:
            continue
        total += tier.share
        parts.append(f"tiers[{index}] {tier.share:g}")
        if total > 1 + 1e-9:
            problems.add(
                f"tiers[{index}].share",
                f"the shares add up to {total:g} ({' + '.join(parts)}), more than 1; "
                "they must leave the lowest tier the rest",
            )
            return


def _check_model_names(
    global_fallback: str,
    tiers: list[tuple[int, TierSpec]],
    models: Mapping[str, ModelSpec],
    problems: Problems,
) -> None:
    def check(key: str, name: str | None) -> None:
        if name and name not in models:
            problems.add(
                key,
                f"unknown model {name!r}{did_you_mean(name, models)}; "
                f"define it as [models.{join_key('', name)}] or use one of: {', '.join(models)}",
            )

    for index, tier in tiers:
        check(f"tiers[{index}].model", tier.model)
        check(f"tiers[{index}].fallback_model", tier.fallback_model)
    check("global_fallback", global_fallback)


def _parse_composer(r: TableReader, tiers: Sequence[TierSpec]) -> ComposerConfig:
    problems = r.problems
    mix: dict[str, int] = {}
    raw_mix = r.raw("mix")
    if raw_mix is REQUIRED:
        problems.add(
            "composer.mix",
            "missing; expected tier name = slots per batch for every tier, "
            "e.g. mix = { hot = 4, warm = 6, cold = 10 }",
        )
    else:
        mix_reader = TableReader(raw_mix, "composer.mix", problems)
        tier_names = [t.name for t in tiers if t.name]
        before = len(problems)
        for name, weight in mix_reader.entries():
            key = join_key("composer.mix", name)
            if tier_names and name not in tier_names:
                problems.add(
                    key,
                    f"no tier named {name!r}{did_you_mean(name, tier_names)}; "
                    f"tiers: {', '.join(tier_names)}",
                )
            mix[name] = mix_reader.check_integer(key, weight, NON_NEGATIVE)
        for name in tier_names:
            if name not in mix:
                problems.add(
                    join_key("composer.mix", name),
                    "missing: every tier needs its slots per batch (write 0 explicitly to give "
                    "it only the slots other tiers leave unused; no tier is starved by accident)",
                )
        if len(problems) == before and sum(mix.values()) == 0:
            problems.add("composer.mix", "weights sum to 0; give at least one tier a slot")
        order = {t.name: i for i, t in enumerate(tiers)}
        mix = dict(sorted(mix.items(), key=lambda kv: order.get(kv[0], len(order))))
    composer = ComposerConfig(
        mix=mix,
        max_queued=r.integer("max_queued", _NO_COMPOSER.max_queued, AT_LEAST_ONE),
        aging_s=r.number("aging_s", _NO_COMPOSER.aging_s, NON_NEGATIVE, allow_inf=True),
        share_window=r.integer("share_window", _NO_COMPOSER.share_window, AT_LEAST_ONE),
    )
    r.finish()
    return composer


def _parse_priority(r: TableReader) -> PriorityConfig:
    d = PriorityConfig()
    priority = PriorityConfig(
        hotness_weight=r.number("hotness_weight", d.hotness_weight),
        goodness_weight=r.number("goodness_weight", d.goodness_weight),
        size_weight=r.number("size_weight", d.size_weight),
        velocity_weight=r.number("velocity_weight", d.velocity_weight),
        half_life_s=r.number("half_life_s", d.half_life_s, POSITIVE),
        size_scale=r.number("size_scale", d.size_scale, POSITIVE),
        velocity_window_s=r.number("velocity_window_s", d.velocity_window_s, POSITIVE),
        velocity_scale=r.number("velocity_scale", d.velocity_scale, POSITIVE),
        default_goodness=r.number("default_goodness", d.default_goodness, UNIT),
        domains=_parse_domains(r.table("domains")),
    )
    r.finish()
    if priority.hotness_weight + priority.goodness_weight == 0:
        r.problems.add(
            "priority",
            "hotness_weight and goodness_weight are both 0; "
            "at least one must be > 0 or every article gets the same priority",
        )
    elif priority.hotness_weight > 0 and priority.size_weight + priority.velocity_weight == 0:
        r.problems.add(
            "priority",
            "size_weight and velocity_weight are both 0 while hotness_weight > 0; "
            "give one of them a positive weight (or set hotness_weight = 0)",
        )
    return priority


def _parse_domains(r: TableReader) -> dict[str, float]:
    """Domain -> goodness; names are normalised as articles' domains are
    (lower case, no ``www.``), so "www.Reuters.com" matches "reuters.com"."""
    domains: dict[str, float] = {}
    written_as: dict[str, str] = {}
    for name, value in r.entries():
        key = join_key(r.path, name)
        domain = normalise_domain(name)
        goodness = r.check_number(key, value, UNIT)
        labels = domain.split(".")
        if len(labels) < 2 or not all(labels) or normalise_domain(domain) != domain:
            r.problems.add(key, "expected a domain name such as 'reuters.com'")
        elif domain in domains:
            r.problems.add(
                key,
                f"same domain as {join_key(r.path, written_as[domain])} "
                f"(both normalise to {domain!r})",
            )
        else:
            domains[domain] = goodness
            written_as[domain] = name
    return domains


def _parse_quota(r: TableReader) -> QuotaConfig:
    d = QuotaConfig()
    r.raw("max_skew_s")  # of older versions: accepted, ignored
    quota = QuotaConfig(
        window_s=r.number("window_s", d.window_s, POSITIVE),
        margin_s=r.number("margin_s", d.margin_s, NON_NEGATIVE),
        utilisation=r.number("utilisation", d.utilisation, Range(above=0, max=1)),
        limiter=LimiterMode(
            r.choice("limiter", d.limiter.value, tuple(m.value for m in LimiterMode))
        ),
        learn_limits=r.boolean("learn_limits", d.learn_limits),
        initial_burst=r.number("initial_burst", d.initial_burst, Range(above=0, max=1)),
        plan=r.boolean("plan", d.plan),
        timezone=r.string("timezone", d.timezone),
        backoff_base_s=r.number("backoff_base_s", d.backoff_base_s, POSITIVE),
        backoff_max_s=r.number("backoff_max_s", d.backoff_max_s, POSITIVE),
        server_error_threshold=r.integer(
            "server_error_threshold", d.server_error_threshold, AT_LEAST_ONE
        ),
    )
    r.finish()
    if quota.timezone and not _is_time_zone(quota.timezone):
        r.problems.add(
            r.key("timezone"),
            f"unknown time zone {quota.timezone!r}; expected an IANA name such as "
            "'America/Los_Angeles' (Gemini resets requests-per-day at Pacific midnight)",
        )
    if quota.backoff_max_s < quota.backoff_base_s:
        r.problems.add(
            r.key("backoff_max_s"),
            f"expected a number >= backoff_base_s ({quota.backoff_base_s}), "
            f"got {quota.backoff_max_s}",
        )
    return quota


def _is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _parse_retry(r: TableReader) -> RetryConfig:
    d = RetryConfig()
    retry = RetryConfig(
        max_attempts=r.integer("max_attempts", d.max_attempts, AT_LEAST_ONE),
        max_failures=r.integer("max_failures", d.max_failures, AT_LEAST_ONE),
        poison_after=r.integer("poison_after", d.poison_after, AT_LEAST_ONE),
        request_timeout_s=r.number("request_timeout_s", d.request_timeout_s, POSITIVE),
    )
    r.finish()
    return retry


def _parse_provider(r: TableReader) -> ProviderConfig:
    d = ProviderConfig()
    kind = r.choice("kind", d.kind.value, tuple(k.value for k in ProviderKind))
    base_url = r.optional_string("base_url")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        r.problems.add(
            r.key("base_url"), "expected an http:// or https:// URL, e.g. 'http://127.0.0.1:8080'"
        )
    provider = ProviderConfig(
        kind=ProviderKind(kind),
        base_url=base_url,
        api_version=r.choice("api_version", d.api_version, API_VERSIONS),
        api_key_env=_parse_env_names(r, d.api_key_env),
        max_output_tokens=r.integer("max_output_tokens", d.max_output_tokens, AT_LEAST_ONE),
        temperature=r.number("temperature", d.temperature, Range(min=0, max=2)),
    )
    r.refuse("api_key", _API_KEY_REFUSAL)
    r.finish()
    return provider


def _parse_env_names(r: TableReader, default: tuple[str, ...]) -> tuple[str, ...]:
    """Environment variable names, tried in order; one name may be a plain string."""
    raw = r.raw("api_key_env")
    if raw is REQUIRED:
        return default
    key = r.key("api_key_env")
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values:
        r.problems.add(key, 'expected a non-empty array of names, e.g. ["GEMINI_API_KEY"]')
        return default
    names: list[str] = []
    for index, value in enumerate(values):
        item_key = f"{key}[{index}]" if isinstance(raw, list) else key
        name = r.check_string(item_key, value, "an environment variable name")
        if name and (name[0].isdigit() or not set(name) <= _ENV_NAME_CHARS):
            r.problems.add(
                item_key, "expected an environment variable name (letters, digits and _)"
            )
        names.append(name)
    return tuple(names)


def _parse_runtime(r: TableReader) -> RuntimeConfig:
    d = RuntimeConfig()
    runtime = RuntimeConfig(
        extractors=r.integer("extractors", d.extractors, AT_LEAST_ONE),
        max_packs_in_flight=r.integer("max_packs_in_flight", d.max_packs_in_flight, AT_LEAST_ONE),
        launch_stagger_s=r.number("launch_stagger_s", d.launch_stagger_s, NON_NEGATIVE),
        max_input_tokens_per_request=r.integer(
            "max_input_tokens_per_request", d.max_input_tokens_per_request, AT_LEAST_ONE
        ),
    )
    r.finish()
    return runtime


def _parse_simulation(r: TableReader, models: Mapping[str, ModelSpec]) -> SimulationConfig:
    d = SimulationConfig()
    limiter = r.choice("limiter", d.limiter.value, tuple(m.value for m in ProviderLimiter))
    bucket_s = r.number("bucket_s", d.bucket_s, POSITIVE)
    table = r.table("models")
    overrides: dict[str, SimulatedLimits] = {}
    for name, _ in table.entries():
        limits = table.table(name)
        if models and name not in models:
            hint = did_you_mean(name, models)
            table.problems.add(
                limits.path, f"not a configured model{hint}; expected one of the [models] names"
            )
        overrides[name] = SimulatedLimits(
            rpm=_optional_limit(limits, "rpm"),
            tpm=_optional_limit(limits, "tpm"),
            rpd=_optional_limit(limits, "rpd"),
        )
        limits.finish()
    r.finish()
    return SimulationConfig(ProviderLimiter(limiter), bucket_s, overrides)


def _optional_limit(r: TableReader, name: str) -> int | None:
    if r.raw(name) is REQUIRED:
        return None
    return r.integer(name, 0, NON_NEGATIVE)


_ACTIONS: Final = tuple(a.value for a in GroundingAction)


def _parse_grounding(r: TableReader) -> GroundingConfig:
    d = GroundingConfig()

    def action(name: str, default: GroundingAction) -> GroundingAction:
        return GroundingAction(r.choice(name, default.value, _ACTIONS))

    grounding = GroundingConfig(
        grounded=action("grounded", d.grounded),
        cross_article=action("cross_article", d.cross_article),
        ungrounded=action("ungrounded", d.ungrounded),
        window_requests=r.integer("window_requests", d.window_requests, AT_LEAST_ONE),
        cross_article_threshold=r.number(
            "cross_article_threshold", d.cross_article_threshold, UNIT
        ),
    )
    r.finish()
    if grounding.grounded is GroundingAction.DROP:
        r.problems.add(
            r.key("grounded"),
            "'drop' would drop every entity found in its own article; expected 'keep' or 'flag'",
        )
    return grounding


def _parse_batch(r: TableReader) -> BatchConfig:
    d = BatchConfig()
    batch = BatchConfig(
        poll_interval_s=r.number("poll_interval_s", d.poll_interval_s, POSITIVE),
        collect_s=r.number("collect_s", d.collect_s, NON_NEGATIVE),
        max_requests_per_job=r.integer(
            "max_requests_per_job", d.max_requests_per_job, AT_LEAST_ONE
        ),
        discount=r.number("discount", d.discount, Range(above=0, max=1)),
        on_job_failure=BatchFailure(
            r.choice("on_job_failure", d.on_job_failure.value, tuple(f.value for f in BatchFailure))
        ),
        give_up_s=r.number("give_up_s", d.give_up_s, POSITIVE),
    )
    r.finish()
    return batch


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
