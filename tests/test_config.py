"""The config schema, its validation, the TOML loader and the shipped configs."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierbatch.adapters.storage.config_file import (
    default_config,
    dump_toml,
    load_config,
    parse_config_text,
    render_config,
)
from tierbatch.policies.budget_config import BudgetConfig
from tierbatch.policies.config import (
    BatchConfig,
    BatchFailure,
    ComposerConfig,
    Config,
    GroundingConfig,
    ModelSpec,
    PriorityConfig,
    ProviderConfig,
    ProviderKind,
    QuotaConfig,
    RetryConfig,
    RuntimeConfig,
    SimulationConfig,
    TierMode,
    TierSpec,
    UnknownModelError,
    config_to_mapping,
)
from tierbatch.policies.config_parsing import parse_config
from tierbatch.policies.config_reader import join_key
from tierbatch.policies.costs import cost_usd
from tierbatch.policies.errors import ConfigError
from tierbatch.policies.grounding import Grounding, GroundingAction, GroundingPolicy
from tierbatch.policies.task import TaskConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FAKE_KEY = "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"

Mapping = dict[str, Any]


def base() -> Mapping:
    """A small valid config as plain data, in the TOML layout."""
    return {
        "global_fallback": "lite",
        "models": {
            "gemini-2.5-pro": {"rpm": 150, "tpm": 2_000_000, "rpd": 10_000},
            "flash": {"rpm": 1_000, "tpm": 1_000_000, "rpd": 10_000},
            "lite": {"rpm": 4_000, "tpm": 4_000_000, "rpd": 0},
        },
        "tiers": [
            {
                "name": "hot",
                "min_priority": 0.7,
                "model": "gemini-2.5-pro",
                "fallback_model": "flash",
            },
            {"name": "warm", "min_priority": 0.4, "model": "flash", "fallback_model": "lite"},
            {"name": "cold", "min_priority": 0.0, "model": "lite"},
        ],
        "composer": {"mix": {"hot": 4, "warm": 6, "cold": 10}},
        "priority": {"domains": {"reuters.com": 0.95}},
    }


def error_of(data: Mapping) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value


# --- the shipped configs ----------------------------------------------------


def test_the_shipped_default_has_the_published_tier1_limits_and_prices() -> None:
    config = default_config()
    pro, flash, lite = (
        config.model(n) for n in ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite")
    )
    assert (pro.rpm, pro.tpm, pro.rpd) == (150, 2_000_000, 10_000)
    assert (pro.price_in_per_m, pro.price_out_per_m) == (1.25, 10.0)
    assert (flash.rpm, flash.tpm, flash.rpd) == (1_000, 1_000_000, 10_000)
    assert (flash.price_in_per_m, flash.price_out_per_m) == (0.30, 2.50)
    assert (lite.rpm, lite.tpm, lite.rpd) == (4_000, 4_000_000, 0)
    assert (lite.price_in_per_m, lite.price_out_per_m) == (0.10, 0.40)
    assert config.global_fallback == "gemini-2.5-flash-lite"
    assert [
        (t.name, t.min_priority, t.model, t.fallback_model, t.max_articles_per_request)
        for t in config.tiers
    ] == [
        ("hot", 0.7, "gemini-2.5-pro", "gemini-2.5-flash", 4),
        ("warm", 0.4, "gemini-2.5-flash", "gemini-2.5-flash-lite", 6),
        ("cold", 0.0, "gemini-2.5-flash-lite", None, 10),
    ]
    assert dict(config.composer.mix) == {"hot": 4, "warm": 6, "cold": 10}
    assert config.composer.batch_size == 20
    assert config.priority.domains["reuters.com"] > config.priority.default_goodness


def test_the_seed_ladder_example_reproduces_the_seed_models() -> None:
    config = load_config(EXAMPLES / "seed-ladder.toml")
    assert set(config.models) == {
        "models/gemini-2.0-flash-thinking-exp-01-21",
        "models/gemini-2.0-flash-exp",
        "models/gemini-2.0-flash",
        "models/gemini-2.0-flash-lite",
    }
    assert config.global_fallback == "models/gemini-2.0-flash-lite"
    assert config.tiers[0].model == "models/gemini-2.0-flash-thinking-exp-01-21"
    assert config.runtime.launch_stagger_s == 0.5
    assert config.retry.request_timeout_s == 60.0


def field_names(cls: type[Any]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_user_example_lists_every_key_with_its_default() -> None:
    data = tomllib.loads((EXAMPLES / "tierbatch.toml").read_text(encoding="utf-8"))
    config = parse_config(data)
    for section, cls in [
        ("priority", PriorityConfig),
        ("quota", QuotaConfig),
        ("retry", RetryConfig),
        ("runtime", RuntimeConfig),
        ("composer", ComposerConfig),
        ("simulation", SimulationConfig),
        ("grounding", GroundingConfig),
        ("batch", BatchConfig),
        ("budget", BudgetConfig),
    ]:
        assert set(data[section]) == field_names(cls), section
    # base_url is documented as a comment: TOML cannot spell its default (None).
    assert set(data["provider"]) | {"base_url"} == field_names(ProviderConfig)
    # The cached and thinking prices too: their defaults derive from the others.
    optional = {"name", "price_cached_per_m", "price_thinking_per_m"}
    for spec in data["models"].values():
        assert set(spec) | optional == field_names(ModelSpec)
    # share is the alternative to min_priority, documented as a comment: a
    # tier takes one of the two.
    example = (EXAMPLES / "tierbatch.toml").read_text(encoding="utf-8")
    assert "\n# share = " in example
    assert set().union(*data["tiers"]) | {"share"} == field_names(TierSpec)

    assert dataclasses.replace(config.priority, domains={}) == PriorityConfig()
    assert config.batch == BatchConfig()
    assert (
        config.quota,
        config.retry,
        config.provider,
        config.runtime,
        config.simulation,
        config.grounding,
    ) == (
        QuotaConfig(),
        RetryConfig(),
        ProviderConfig(),
        RuntimeConfig(),
        SimulationConfig(),
        GroundingConfig(),
    )
    assert config.budget == BudgetConfig()
    assert set(data["task"]) == field_names(TaskConfig)
    assert config.task == TaskConfig() and config.task.is_default
    defaults = ComposerConfig(mix={})
    assert (config.composer.max_queued, config.composer.aging_s) == (
        defaults.max_queued,
        defaults.aging_s,
    )
    assert config.models == default_config().models


@pytest.mark.parametrize(
    "load",
    [
        default_config,
        lambda: load_config(EXAMPLES / "seed-ladder.toml"),
        lambda: load_config(str(EXAMPLES / "tierbatch.toml")),
    ],
    ids=["default", "seed-ladder", "tierbatch"],
)
def test_shipped_configs_round_trip_through_mapping_and_toml(load: Callable[[], Config]) -> None:
    config = load()
    assert parse_config(config_to_mapping(config)) == config
    assert parse_config(tomllib.loads(render_config(config))) == config


# --- parsing ------------------------------------------------------------------


def test_omitted_sections_and_keys_take_the_dataclass_defaults() -> None:
    config = parse_config(base())
    assert config.quota == QuotaConfig()
    assert config.retry == RetryConfig()
    assert config.provider == ProviderConfig()
    assert config.runtime == RuntimeConfig()
    assert config.model("lite") == ModelSpec("lite", rpm=4_000, tpm=4_000_000, rpd=0)
    assert config.tiers[2] == TierSpec("cold", 0.0, "lite")


def test_tiers_are_ordered_highest_first_whatever_the_file_order() -> None:
    data = base()
    data["tiers"].reverse()
    config = parse_config(data)
    assert [t.name for t in config.tiers] == ["hot", "warm", "cold"]
    assert list(config.composer.mix) == ["hot", "warm", "cold"]


def test_integers_are_accepted_where_floats_are_expected() -> None:
    data = base()
    data["quota"] = {"window_s": 60, "utilisation": 1}
    data["tiers"][0]["min_priority"] = 1
    config = parse_config(data)
    assert config.quota.window_s == 60.0 and isinstance(config.quota.window_s, float)
    assert config.tiers[0].min_priority == 1.0


def test_domain_names_are_normalised_like_article_domains() -> None:
    data = base()
    data["priority"]["domains"] = {"WWW.BBC.co.uk.": 0.9}
    assert dict(parse_config(data).priority.domains) == {"bbc.co.uk": 0.9}


def test_a_single_api_key_variable_may_be_a_plain_string() -> None:
    data = base()
    data["provider"] = {"api_key_env": "MY_GEMINI_KEY", "kind": "genai"}
    provider = parse_config(data).provider
    assert provider.api_key_env == ("MY_GEMINI_KEY",)
    assert provider.kind is ProviderKind.GENAI


def test_aging_may_be_disabled_with_infinity() -> None:
    data = base()
    data["composer"]["aging_s"] = math.inf
    config = parse_config(data)
    assert config.composer.aging_s == math.inf
    assert parse_config(tomllib.loads(render_config(config))) == config


def test_the_grounding_section_sets_the_action_of_each_outcome() -> None:
    data = base()
    data["grounding"] = {"grounded": "flag", "cross_article": "keep", "ungrounded": "drop"}
    data["grounding"] |= {"window_requests": 5, "cross_article_threshold": 0.2}
    data["tiers"][0]["adaptive_pack"] = True
    config = parse_config(data)
    assert config.grounding == GroundingConfig(
        GroundingAction.FLAG, GroundingAction.KEEP, GroundingAction.DROP, 5, 0.2
    )
    assert config.grounding.policy.action(Grounding.UNGROUNDED) is GroundingAction.DROP
    assert [t.adaptive_pack for t in config.tiers] == [True, False, False]
    assert parse_config(base()).grounding.policy == GroundingPolicy()


def test_an_explicit_zero_weight_is_allowed() -> None:
    data = base()
    data["composer"]["mix"]["cold"] = 0
    assert parse_config(data).composer.mix["cold"] == 0


# --- validation: every mistake names its key ---------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Mapping], None]:
    def mutate(data: Mapping) -> None:
        target: Any = data
        for step in path[:-1]:
            target = target.setdefault(step, {}) if isinstance(target, dict) else target[step]
        target[path[-1]] = value

    return mutate


def _delete(*path: Any) -> Callable[[Mapping], None]:
    def mutate(data: Mapping) -> None:
        target: Any = data
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return mutate


PRO = 'models."gemini-2.5-pro"'
CASES: list[tuple[str, Callable[[Mapping], None], str]] = [
    ("unknown top-level key", _set(("modles",), {}), "modles"),
    ("unknown key in a section", _set(("quota", "windw_s"), 60), "quota.windw_s"),
    ("unknown key in a model", _set(("models", "gemini-2.5-pro", "rpmm"), 1), f"{PRO}.rpmm"),
    ("unknown key in a tier", _set(("tiers", 1, "modle"), "flash"), "tiers[1].modle"),
    ("bool is not an int", _set(("models", "gemini-2.5-pro", "rpm"), True), f"{PRO}.rpm"),
    ("float is not an int", _set(("models", "gemini-2.5-pro", "rpm"), 150.0), f"{PRO}.rpm"),
    ("string is not a number", _set(("quota", "window_s"), "60"), "quota.window_s"),
    ("bool is not a float", _set(("quota", "utilisation"), True), "quota.utilisation"),
    ("negative rpm", _set(("models", "flash", "rpm"), -1), "models.flash.rpm"),
    ("negative tpm", _set(("models", "flash", "tpm"), -5), "models.flash.tpm"),
    ("negative rpd", _set(("models", "flash", "rpd"), -1), "models.flash.rpd"),
    (
        "negative in-flight cap",
        _set(("models", "lite", "max_in_flight"), -1),
        "models.lite.max_in_flight",
    ),
    (
        "negative price",
        _set(("models", "lite", "price_in_per_m"), -0.1),
        "models.lite.price_in_per_m",
    ),
    (
        "zero context",
        _set(("models", "lite", "max_input_tokens"), 0),
        "models.lite.max_input_tokens",
    ),
    ("missing rpm", _delete("models", "lite", "rpm"), "models.lite.rpm"),
    ("no models", _set(("models",), {}), "models"),
    ("models missing", _delete("models"), "models"),
    ("model is not a table", _set(("models", "lite"), 5), "models.lite"),
    ("tier names unknown model", _set(("tiers", 0, "model"), "gemini-2.5-prp"), "tiers[0].model"),
    (
        "unknown fallback model",
        _set(("tiers", 1, "fallback_model"), "x"),
        "tiers[1].fallback_model",
    ),
    ("unknown global fallback", _set(("global_fallback",), "nope"), "global_fallback"),
    ("global fallback missing", _delete("global_fallback"), "global_fallback"),
    ("duplicate tier name", _set(("tiers", 2, "name"), "hot"), "tiers[2].name"),
    ("no tiers", _set(("tiers",), []), "tiers"),
    ("tiers missing", _delete("tiers"), "tiers"),
    ("tiers not an array", _set(("tiers",), {"name": "hot"}), "tiers"),
    ("tier not a table", _set(("tiers", 1), "warm"), "tiers[1]"),
    ("tier name missing", _delete("tiers", 1, "name"), "tiers[1].name"),
    ("threshold above 1", _set(("tiers", 0, "min_priority"), 1.5), "tiers[0].min_priority"),
    ("threshold below 0", _set(("tiers", 2, "min_priority"), -0.1), "tiers[2].min_priority"),
    ("equal thresholds", _set(("tiers", 1, "min_priority"), 0.7), "tiers[1].min_priority"),
    (
        "pack of zero",
        _set(("tiers", 0, "max_articles_per_request"), 0),
        "tiers[0].max_articles_per_request",
    ),
    ("mix names unknown tier", _set(("composer", "mix", "warmm"), 1), "composer.mix.warmm"),
    ("negative weight", _set(("composer", "mix", "hot"), -1), "composer.mix.hot"),
    ("float weight", _set(("composer", "mix", "hot"), 1.5), "composer.mix.hot"),
    (
        "weights sum to 0",
        _set(("composer", "mix"), {"hot": 0, "warm": 0, "cold": 0}),
        "composer.mix",
    ),
    ("tier missing from mix", _delete("composer", "mix", "cold"), "composer.mix.cold"),
    ("mix missing", _delete("composer", "mix"), "composer.mix"),
    ("composer missing", _delete("composer"), "composer.mix"),
    ("queue of zero", _set(("composer", "max_queued"), 0), "composer.max_queued"),
    ("negative aging", _set(("composer", "aging_s"), -1.0), "composer.aging_s"),
    (
        "goodness above 1",
        _set(("priority", "domains", "reuters.com"), 1.2),
        'priority.domains."reuters.com"',
    ),
    (
        "goodness not a number",
        _set(("priority", "domains", "ft.com"), "high"),
        'priority.domains."ft.com"',
    ),
    (
        "domain without a dot",
        _set(("priority", "domains", "localhost"), 0.5),
        "priority.domains.localhost",
    ),
    (
        "same domain twice",
        _set(("priority", "domains", "www.Reuters.com"), 0.5),
        'priority.domains."www.Reuters.com"',
    ),
    (
        "default goodness above 1",
        _set(("priority", "default_goodness"), 1.01),
        "priority.default_goodness",
    ),
    ("negative weight", _set(("priority", "hotness_weight"), -0.5), "priority.hotness_weight"),
    (
        "all weights zero",
        lambda d: d["priority"].update(hotness_weight=0, goodness_weight=0.0),
        "priority",
    ),
    (
        "hotness without terms",
        lambda d: d["priority"].update(size_weight=0, velocity_weight=0.0),
        "priority",
    ),
    ("zero half-life", _set(("priority", "half_life_s"), 0), "priority.half_life_s"),
    ("zero size scale", _set(("priority", "size_scale"), 0.0), "priority.size_scale"),
    ("zero window", _set(("quota", "window_s"), 0), "quota.window_s"),
    ("NaN window", _set(("quota", "window_s"), math.nan), "quota.window_s"),
    ("infinite window", _set(("quota", "window_s"), math.inf), "quota.window_s"),
    ("negative margin", _set(("quota", "margin_s"), -0.5), "quota.margin_s"),
    ("zero utilisation", _set(("quota", "utilisation"), 0.0), "quota.utilisation"),
    ("utilisation above 1", _set(("quota", "utilisation"), 1.5), "quota.utilisation"),
    ("unknown time zone", _set(("quota", "timezone"), "Pacific/Nowhere"), "quota.timezone"),
    ("time zone is a folder", _set(("quota", "timezone"), "America"), "quota.timezone"),
    ("time zone is a path", _set(("quota", "timezone"), "../etc/passwd"), "quota.timezone"),
    (
        "backoff max below base",
        lambda d: d.update(quota={"backoff_base_s": 5.0, "backoff_max_s": 1.0}),
        "quota.backoff_max_s",
    ),
    (
        "zero error threshold",
        _set(("quota", "server_error_threshold"), 0),
        "quota.server_error_threshold",
    ),
    ("zero attempts", _set(("retry", "max_attempts"), 0), "retry.max_attempts"),
    ("zero failures", _set(("retry", "max_failures"), 0), "retry.max_failures"),
    ("zero poison", _set(("retry", "poison_after"), 0), "retry.poison_after"),
    ("zero timeout", _set(("retry", "request_timeout_s"), 0), "retry.request_timeout_s"),
    ("unknown provider kind", _set(("provider", "kind"), "openai"), "provider.kind"),
    ("unknown API version", _set(("provider", "api_version"), "v2"), "provider.api_version"),
    ("base URL not http", _set(("provider", "base_url"), "ftp://example.com"), "provider.base_url"),
    ("no key variables", _set(("provider", "api_key_env"), []), "provider.api_key_env"),
    (
        "bad variable name",
        _set(("provider", "api_key_env"), ["OK", "1BAD"]),
        "provider.api_key_env[1]",
    ),
    (
        "zero output tokens",
        _set(("provider", "max_output_tokens"), 0),
        "provider.max_output_tokens",
    ),
    ("temperature above 2", _set(("provider", "temperature"), 2.5), "provider.temperature"),
    ("zero extractors", _set(("runtime", "extractors"), 0), "runtime.extractors"),
    (
        "zero packs in flight",
        _set(("runtime", "max_packs_in_flight"), 0),
        "runtime.max_packs_in_flight",
    ),
    ("negative stagger", _set(("runtime", "launch_stagger_s"), -1), "runtime.launch_stagger_s"),
    (
        "zero token cap",
        _set(("runtime", "max_input_tokens_per_request"), 0),
        "runtime.max_input_tokens_per_request",
    ),
    ("section not a table", _set(("quota",), 5), "quota"),
    (
        "unknown grounding action",
        _set(("grounding", "cross_article"), "dorp"),
        "grounding.cross_article",
    ),
    ("grounding action not a string", _set(("grounding", "ungrounded"), 1), "grounding.ungrounded"),
    ("grounded entities dropped", _set(("grounding", "grounded"), "drop"), "grounding.grounded"),
    (
        "zero grounding window",
        _set(("grounding", "window_requests"), 0),
        "grounding.window_requests",
    ),
    (
        "threshold above 1",
        _set(("grounding", "cross_article_threshold"), 1.5),
        "grounding.cross_article_threshold",
    ),
    ("unknown grounding key", _set(("grounding", "treshold"), 0.1), "grounding.treshold"),
    ("adaptive pack not a bool", _set(("tiers", 0, "adaptive_pack"), 1), "tiers[0].adaptive_pack"),
]


@pytest.mark.parametrize(("mutate", "key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mistake_is_reported_under_its_key(
    mutate: Callable[[Mapping], None], key: str
) -> None:
    data = base()
    mutate(data)
    error = error_of(data)
    assert error.key == key, error
    assert error.problem
    assert f"{key}: " in str(error)


def test_an_unknown_key_lists_the_allowed_ones_and_suggests_the_nearest() -> None:
    data = base()
    data["quota"] = {"windw_s": 60}
    error = error_of(data)
    assert "did you mean 'window_s'?" in error.problem
    assert "utilisation" in error.problem


def test_an_unknown_model_suggests_the_nearest() -> None:
    data = base()
    data["tiers"][0]["model"] = "gemini-2.5-prp"
    assert "did you mean 'gemini-2.5-pro'?" in error_of(data).problem


def test_every_mistake_is_reported_in_one_pass() -> None:
    data = base()
    data["quota"] = {"window_s": -1}
    data["runtime"] = {"extractors": 0}
    data["tiers"][0]["model"] = "nope"
    error = error_of(data)
    keys = [key for key, _ in error.problems]
    assert keys == ["quota.window_s", "runtime.extractors", "tiers[0].model"]
    assert all(key in str(error) for key in keys)


@pytest.mark.parametrize("where", [("provider",), ()], ids=["provider", "top level"])
def test_an_api_key_in_the_file_is_refused_without_echoing_it(where: tuple[str, ...]) -> None:
    data = base()
    _set((*where, "api_key"), FAKE_KEY)(data)
    error = error_of(data)
    assert error.key == join_key(".".join(where), "api_key")
    assert "environment variable" in error.problem
    assert FAKE_KEY not in str(error)


def test_a_key_pasted_into_another_field_is_refused_without_echoing_it() -> None:
    data = base()
    data["provider"] = {"api_key_env": [FAKE_KEY], "kind": FAKE_KEY}
    error = error_of(data)
    assert [k for k, _ in error.problems] == ["provider.kind", "provider.api_key_env[0]"]
    assert FAKE_KEY not in str(error)


def test_a_config_error_pickles_with_all_its_problems() -> None:
    error = ConfigError("quota.window_s", "expected > 0", "x.toml", [("retry.max_attempts", "bad")])
    copy_ = pickle.loads(pickle.dumps(error))
    assert (copy_.key, copy_.problem, copy_.source, copy_.problems) == (
        error.key,
        error.problem,
        error.source,
        error.problems,
    )
    assert str(copy_) == str(error)


def test_a_config_pickles() -> None:
    config = default_config()
    assert pickle.loads(pickle.dumps(config)) == config


def test_a_non_mapping_is_refused() -> None:
    with pytest.raises(ConfigError):
        parse_config([])  # type: ignore[arg-type]


# --- files ------------------------------------------------------------------


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('global_fallback = "lite"\nrpm = = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert "line 2" in str(caught.value)
    assert caught.value.source == str(path)


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="not found") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_a_directory_or_binary_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(binary)


def test_validation_errors_from_a_file_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    text = render_config(default_config()).replace("extractors = 4", "extractors = 0")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "runtime.extractors"
    assert str(caught.value).startswith(f"{path}: runtime.extractors: ")


def test_parse_config_text_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^inline: invalid TOML"):
        parse_config_text("[[", "inline")


def test_resolved_settings_never_include_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    text = render_config(default_config())
    assert FAKE_KEY not in text
    assert "api_key_env" in text


# --- helpers ----------------------------------------------------------------


def test_model_lookup_names_the_known_models() -> None:
    config = parse_config(base())
    assert config.model("flash").rpm == 1_000
    with pytest.raises(UnknownModelError, match=r"gemini-2\.5-pro") as caught:
        config.model("gpt")
    assert isinstance(caught.value, KeyError)
    assert caught.value.name == "gpt"


def test_cost_is_priced_per_million_tokens() -> None:
    spec = ModelSpec("m", rpm=1, tpm=1, rpd=0, price_in_per_m=1.25, price_out_per_m=10.0)
    assert cost_usd(spec, 1_000_000, 0) == pytest.approx(1.25)
    assert cost_usd(spec, 2_000, 500) == pytest.approx(0.0025 + 0.005)
    assert cost_usd(spec, 0, 0) == 0.0
    with pytest.raises(ValueError):
        cost_usd(spec, -1, 0)


# --- hypothesis: random valid configs ------------------------------------------

NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_./ "
names = st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda s: s.strip() != "")
labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
domains = (
    st.lists(labels, min_size=2, max_size=3)
    .map(".".join)
    .filter(lambda d: not d.startswith("www."))
)
env_names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,15}", fullmatch=True)
unit = st.floats(0, 1)
positive = st.floats(0, 1e9, exclude_min=True)
non_negative = st.floats(0, 1e9)
counts = st.integers(0, 2**40)
at_least_one = st.integers(1, 2**31)


def _some(draw: st.DrawFn, table: Mapping) -> Mapping:
    """``table`` without a random subset of its keys (they take defaults)."""
    dropped = draw(st.sets(st.sampled_from(sorted(table)))) if table else set()
    return {k: v for k, v in table.items() if k not in dropped}


@st.composite
def config_mappings(draw: st.DrawFn) -> Mapping:
    model_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    models = {}
    for name in model_names:
        optional = _some(
            draw,
            {
                "max_in_flight": draw(st.integers(0, 1000)),
                "price_in_per_m": draw(st.floats(0, 100)),
                "price_out_per_m": draw(st.integers(0, 100)),
                "max_input_tokens": draw(at_least_one),
            },
        )
        models[name] = {"rpm": draw(counts), "tpm": draw(counts), "rpd": draw(counts), **optional}
    tier_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    thresholds = draw(
        st.lists(unit, min_size=len(tier_names), max_size=len(tier_names), unique=True)
    )
    model = st.sampled_from(model_names)
    tiers = []
    for name, threshold in zip(tier_names, thresholds, strict=True):
        tier = {"name": name, "min_priority": threshold, "model": draw(model)}
        tier |= _some(
            draw,
            {
                "fallback_model": draw(model),
                "max_articles_per_request": draw(st.integers(1, 50)),
                "adaptive_pack": draw(st.booleans()),
            },
        )
        tiers.append(tier)
    weights = draw(st.lists(st.integers(0, 20), min_size=len(tier_names), max_size=len(tier_names)))
    if sum(weights) == 0:
        weights[0] = 1
    hotness, goodness = draw(st.tuples(non_negative, non_negative).filter(lambda w: sum(w) > 0))
    size, velocity = draw(st.tuples(non_negative, non_negative).filter(lambda w: sum(w) > 0))
    data: Mapping = {
        "global_fallback": draw(model),
        "models": models,
        "tiers": tiers,
        "composer": {
            "mix": dict(zip(tier_names, weights, strict=True)),
            **_some(
                draw,
                {
                    "max_queued": draw(at_least_one),
                    "aging_s": draw(st.one_of(non_negative, st.just(math.inf))),
                },
            ),
        },
        "priority": _some(
            draw,
            {
                "hotness_weight": hotness,
                "goodness_weight": goodness,
                "size_weight": size,
                "velocity_weight": velocity,
                "half_life_s": draw(positive),
                "size_scale": draw(positive),
                "velocity_window_s": draw(positive),
                "velocity_scale": draw(positive),
                "default_goodness": draw(unit),
                "domains": draw(st.dictionaries(domains, unit, max_size=4)),
            },
        ),
        "quota": _some(
            draw,
            {
                "window_s": draw(positive),
                "margin_s": draw(non_negative),
                "utilisation": draw(st.floats(0, 1, exclude_min=True)),
                "timezone": draw(st.sampled_from(["UTC", "America/Los_Angeles", "Europe/Paris"])),
                # at most / at least the defaults, so either may be left out
                "backoff_base_s": draw(
                    st.floats(0, QuotaConfig().backoff_base_s, exclude_min=True)
                ),
                "backoff_max_s": draw(st.floats(QuotaConfig().backoff_max_s, 1e9)),
                "server_error_threshold": draw(st.integers(1, 100)),
            },
        ),
        "retry": _some(
            draw,
            {
                "max_attempts": draw(st.integers(1, 100)),
                "max_failures": draw(st.integers(1, 100)),
                "poison_after": draw(st.integers(1, 100)),
                "request_timeout_s": draw(positive),
            },
        ),
        "provider": _some(
            draw,
            {
                "kind": draw(st.sampled_from([k.value for k in ProviderKind])),
                "base_url": draw(st.sampled_from(["http://127.0.0.1:8080", "https://x.example/"])),
                "api_version": draw(st.sampled_from(["v1", "v1beta", "v1alpha"])),
                "api_key_env": draw(st.lists(env_names, min_size=1, max_size=3)),
                "max_output_tokens": draw(at_least_one),
                "temperature": draw(st.floats(0, 2)),
            },
        ),
        "runtime": _some(
            draw,
            {
                "extractors": draw(st.integers(1, 64)),
                "max_packs_in_flight": draw(st.integers(1, 1000)),
                "launch_stagger_s": draw(non_negative),
                "max_input_tokens_per_request": draw(at_least_one),
            },
        ),
        "grounding": _some(
            draw,
            {
                "grounded": draw(st.sampled_from(["keep", "flag"])),
                "cross_article": draw(st.sampled_from(["keep", "flag", "drop"])),
                "ungrounded": draw(st.sampled_from(["keep", "flag", "drop"])),
                "window_requests": draw(st.integers(1, 1000)),
                "cross_article_threshold": draw(unit),
            },
        ),
    }
    # Whole optional sections may be left out too.
    for section in draw(
        st.sets(st.sampled_from(["priority", "quota", "retry", "provider", "runtime", "grounding"]))
    ):
        del data[section]
    return data


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(config_mappings())
def test_random_valid_configs_round_trip(data: Mapping) -> None:
    config = parse_config(data)
    assert parse_config(config_to_mapping(config)) == config
    assert parse_config(tomllib.loads(render_config(config))) == config
    thresholds = [t.min_priority for t in config.tiers]
    assert thresholds == sorted(thresholds, reverse=True)


def _leaf_paths(data: Mapping) -> list[tuple[tuple[Any, ...], str]]:
    """Every scalar entry of a config mapping, with the key an error names."""
    leaves: list[tuple[tuple[Any, ...], str]] = []

    def walk(node: Any, path: tuple[Any, ...], key: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                walk(value, (*path, name), join_key(key, name))
        elif isinstance(node, list) and node and isinstance(node[0], dict):
            for index, value in enumerate(node):
                walk(value, (*path, index), f"{key}[{index}]")
        else:
            leaves.append((path, key))

    walk(data, (), "")
    return leaves


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(config_mappings(), st.data())
def test_any_entry_of_the_wrong_type_is_reported_under_its_own_key(
    data: Mapping, pick: st.DataObject
) -> None:
    path, key = pick.draw(st.sampled_from(_leaf_paths(data)))
    current: Any = data
    for step in path:
        current = current[step]
    # true is the right type for a boolean entry (tiers[].adaptive_pack)
    wrong = [{"x": 1}] if isinstance(current, bool) else [True, {"x": 1}]
    broken = copy.deepcopy(data)
    _set(path, pick.draw(st.sampled_from(wrong)))(broken)
    assert error_of(broken).key == key


scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(st.characters(codec="utf-8"), max_size=8),
)
keys = st.text(st.characters(codec="utf-8"), max_size=6)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


@given(st.dictionaries(keys, toml_values, max_size=5))
def test_dump_toml_writes_what_tomllib_reads_back(data: Mapping) -> None:
    assert tomllib.loads(dump_toml(data)) == data


# ---- batch modes -------------------------------------------------------------


def test_tier_modes_default_to_interactive_and_parse() -> None:
    data = copy.deepcopy(dict(base()))
    data["tiers"][2].update(mode="auto", max_latency_s=3600)
    data["tiers"][1].update(mode="batch")
    data["batch"] = {"poll_interval_s": 5, "on_job_failure": "interactive", "discount": 0.5}
    config = parse_config(data)
    modes = {t.name: (t.mode, t.max_latency_s) for t in config.tiers}
    assert modes == {
        "hot": (TierMode.INTERACTIVE, None),
        "warm": (TierMode.BATCH, None),
        "cold": (TierMode.AUTO, 3600.0),
    }
    assert config.uses_batch
    assert config.batch.poll_interval_s == 5.0
    assert config.batch.on_job_failure is BatchFailure.INTERACTIVE
    assert not parse_config(base()).uses_batch
    assert parse_config(tomllib.loads(render_config(config))) == config


def test_bad_tier_mode_names_the_field() -> None:
    data = copy.deepcopy(dict(base()))
    data["tiers"][2]["mode"] = "later"
    error = error_of(data)
    assert error.key == "tiers[2].mode"
    assert "interactive" in error.problem and "batch" in error.problem


def test_auto_without_max_latency_is_refused() -> None:
    data = copy.deepcopy(dict(base()))
    data["tiers"][2]["mode"] = "auto"
    error = error_of(data)
    assert error.key == "tiers[2].max_latency_s"
    assert "auto" in error.problem


def test_bad_max_latency_and_batch_keys_name_the_field() -> None:
    data = copy.deepcopy(dict(base()))
    data["tiers"][0]["max_latency_s"] = 0
    data["batch"] = {"discount": 1.5, "on_job_failure": "drop", "poll_interval_s": -1}
    keys = {key for key, _ in error_of(data).problems}
    assert keys == {
        "tiers[0].max_latency_s",
        "batch.discount",
        "batch.on_job_failure",
        "batch.poll_interval_s",
    }
