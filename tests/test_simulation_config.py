"""The ``[simulation]`` section: what the simulated provider enforces --
its limiter's shape and, per model, limits that differ from the configured
ones (a config that over-claims, as the demo's does)."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tierbatch.actors.clock import SystemClock
from tierbatch.adapters.app.provider_factory import make_provider
from tierbatch.adapters.simulation.simulated import SimulatedProvider
from tierbatch.adapters.storage.config_file import render_config
from tierbatch.policies.config import (
    ConfigError,
    ProviderLimiter,
    SimulatedLimits,
    SimulationConfig,
    config_to_mapping,
    parse_config,
)

BASE: dict[str, Any] = {
    "global_fallback": "lite",
    "models": {
        "pro": {"rpm": 20, "tpm": 1000, "rpd": 100},
        "lite": {"rpm": 40, "tpm": 0, "rpd": 0},
    },
    "tiers": [{"name": "all", "min_priority": 0.0, "model": "pro", "fallback_model": "lite"}],
    "composer": {"mix": {"all": 1}},
    "provider": {"kind": "simulated"},
}


def with_simulation(simulation: Any) -> dict[str, Any]:
    return {**BASE, "simulation": simulation}


def test_the_default_is_the_configured_limits_in_a_rolling_window() -> None:
    config = parse_config(BASE)
    assert config.simulation == SimulationConfig()
    assert config.simulation.enforced(config.models) == dict(config.models)


def test_limits_the_simulated_provider_enforces_instead() -> None:
    config = parse_config(
        with_simulation(
            {"limiter": "bucket", "bucket_s": 5.0, "models": {"pro": {"rpm": 10, "rpd": 7}}}
        )
    )
    simulation = config.simulation
    assert simulation.limiter is ProviderLimiter.BUCKET and simulation.bucket_s == 5.0
    assert simulation.models == {"pro": SimulatedLimits(rpm=10, rpd=7)}
    enforced = simulation.enforced(config.models)
    assert (enforced["pro"].rpm, enforced["pro"].tpm, enforced["pro"].rpd) == (10, 1000, 7)
    assert enforced["lite"] == config.models["lite"]
    assert config.models["pro"].rpm == 20  # what the registry believes is unchanged
    assert parse_config(config_to_mapping(config)) == config
    assert parse_config(tomllib.loads(render_config(config))) == config


@pytest.mark.parametrize(
    ("simulation", "key", "problem"),
    [
        ({"limiter": "leaky"}, "simulation.limiter", "expected one of"),
        ({"bucket_s": 0}, "simulation.bucket_s", "> 0"),
        ({"models": {"prro": {"rpm": 1}}}, "simulation.models.prro", "did you mean 'pro'"),
        ({"models": {"pro": {"rpm": -1}}}, "simulation.models.pro.rpm", ">= 0"),
        ({"models": {"pro": {"rpms": 1}}}, "simulation.models.pro.rpms", "unknown key"),
        ({"models": {"pro": 5}}, "simulation.models.pro", "expected a table"),
        ({"shape": "window"}, "simulation.shape", "unknown key"),
    ],
)
def test_bad_simulation_settings_name_the_key(simulation: Any, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(with_simulation(simulation))
    found = [(k, p) for k, p in raised.value.problems if k == key]
    assert found, raised.value.problems
    assert problem in found[0][1]


def test_the_simulated_provider_enforces_the_simulation_section() -> None:
    config = parse_config(
        with_simulation({"limiter": "bucket", "bucket_s": 3.0, "models": {"pro": {"rpm": 10}}})
    )
    provider, description = make_provider(config, SystemClock())
    assert isinstance(provider, SimulatedProvider)
    assert provider.quota.limiter is ProviderLimiter.BUCKET and provider.quota.bucket_s == 3.0
    # It enforces 10 a minute on pro, in a bucket holding one request.
    now = provider.now()
    assert provider.quota.check("simulated", "pro", 1, now) is None
    refused = provider.quota.check("simulated", "pro", 1, now)
    assert refused is not None and refused.quota_value == 10
    assert refused.retry_delay_s == pytest.approx(6.0)
    assert description == (
        "simulated (provider.kind = simulated) (enforcing token buckets of 3 s; pro rpm 10)"
    )
    plain, plain_description = make_provider(parse_config(BASE), SystemClock())
    assert plain_description == "simulated (provider.kind = simulated)"
    assert isinstance(plain, SimulatedProvider)
    assert plain.quota.limiter is ProviderLimiter.WINDOW
