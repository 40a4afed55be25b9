"""Reading a config: ``parse_config`` turns the mapping read from a TOML file
(or built in code) into a ``Config`` (``policies.config``), checking every
key once, and raises ``ConfigError`` naming each offending key and the
problem. Reading files is an adapter's job
(``tierbatch.adapters.storage.config_file``).

Longer than the house's ~450 lines on purpose: one reader per config
section, each naming its keys in its errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tierbatch.policies.articles import normalise_domain
from tierbatch.policies.budget_config import parse_budget
from tierbatch.policies.config import (
    BatchConfig,
    BatchFailure,
    ComposerConfig,
    Config,
    GroundingConfig,
    LimiterMode,
    ModelSpec,
    PriorityConfig,
    ProviderConfig,
    ProviderKind,
    ProviderLimiter,
    QuotaConfig,
    RetryConfig,
    RuntimeConfig,
    SimulatedLimits,
    SimulationConfig,
    TierMode,
    TierSpec,
    ladder_order,
)
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
from tierbatch.policies.errors import ConfigError
from tierbatch.policies.grounding import GroundingAction
from tierbatch.policies.task import parse_task

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


_MODES: Final = tuple(m.value for m in TierMode)


def _optional_positive(r: TableReader, name: str) -> float | None:
    """A number > 0, or None when the key is absent."""
    if not r.has(name):
        return None
    return r.number(name, REQUIRED, POSITIVE)


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
