"""Tiers by share in the config: ``share`` instead of ``min_priority``, the
errors that name the field, the order a share ladder keeps, the window."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tierbatch.adapters.storage.config_file import render_config
from tierbatch.policies.config import (
    ConfigError,
    config_to_mapping,
    parse_config,
)
from tierbatch.policies.tiers import TierLadder


def shares(**changes: Any) -> dict[str, Any]:
    """hot = top 10%, warm = next 30%, cold = the rest (neither key)."""
    data: dict[str, Any] = {
        "global_fallback": "lite",
        "models": {
            "pro": {"rpm": 150, "tpm": 2_000_000, "rpd": 10_000},
            "lite": {"rpm": 4_000, "tpm": 4_000_000, "rpd": 0},
        },
        "tiers": [
            {"name": "hot", "share": 0.1, "model": "pro"},
            {"name": "warm", "share": 0.3, "model": "lite"},
            {"name": "cold", "model": "lite"},
        ],
        "composer": {"mix": {"hot": 4, "warm": 6, "cold": 10}},
    }
    data.update(changes)
    return data


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return dict(caught.value.problems)


def test_a_share_ladder_parses_and_keeps_its_listed_order() -> None:
    config = parse_config(shares())
    assert [(t.name, t.share) for t in config.tiers] == [
        ("hot", 0.1),
        ("warm", 0.3),
        ("cold", None),
    ]
    assert config.composer.share_window == 10_000
    ladder = TierLadder(config.tiers, config.global_fallback)
    assert ladder.names == ("hot", "warm", "cold") and ladder.uses_shares


def test_shares_mix_with_fixed_thresholds_listed_highest_first() -> None:
    data = shares()
    data["tiers"][1] = {"name": "warm", "min_priority": 0.4, "model": "lite"}
    config = parse_config(data)
    assert [(t.name, t.share, t.min_priority) for t in config.tiers][:2] == [
        ("hot", 0.1, 0.0),
        ("warm", None, 0.4),
    ]


def test_a_tier_with_both_min_priority_and_share_is_refused_naming_the_field() -> None:
    data = shares()
    data["tiers"][0]["min_priority"] = 0.7
    found = problems(data)
    assert "tiers[0].share" in found
    assert "either min_priority" in found["tiers[0].share"]


def test_a_tier_with_neither_is_refused_naming_both_choices() -> None:
    data = shares()
    del data["tiers"][1]["share"]
    found = problems(data)
    assert "missing; expected" in found["tiers[1].min_priority"]
    assert "share" in found["tiers[1].min_priority"]


def test_a_threshold_ladder_still_requires_min_priority_on_every_tier() -> None:
    data = shares()
    data["tiers"] = [
        {"name": "hot", "min_priority": 0.7, "model": "pro"},
        {"name": "cold", "model": "lite"},
    ]
    data["composer"] = {"mix": {"hot": 1, "cold": 1}}
    assert "tiers[1].min_priority" in problems(data)


def test_shares_over_one_are_refused_at_the_tier_that_passes_one() -> None:
    data = shares()
    data["tiers"][1]["share"] = 0.95
    found = problems(data)
    assert "add up to 1.05" in found["tiers[1].share"]
    assert "tiers[0] 0.1 + tiers[1] 0.95" in found["tiers[1].share"]


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, "ten"])
def test_a_share_outside_zero_one_is_refused(bad: object) -> None:
    data = shares()
    data["tiers"][0]["share"] = bad
    assert "tiers[0].share" in problems(data)


def test_the_lowest_tier_takes_the_rest_and_may_not_have_a_share() -> None:
    data = shares()
    data["tiers"][2]["share"] = 0.6
    found = problems(data)
    assert "lowest tier takes the rest" in found["tiers[2].share"]


def test_fixed_thresholds_in_a_share_ladder_must_fall_down_the_list() -> None:
    data = shares()
    data["tiers"] = [
        {"name": "top", "min_priority": 0.3, "model": "pro"},
        {"name": "hot", "share": 0.1, "model": "pro"},
        {"name": "warm", "min_priority": 0.6, "model": "lite"},
        {"name": "cold", "model": "lite"},
    ]
    data["composer"] = {"mix": {"top": 1, "hot": 1, "warm": 1, "cold": 1}}
    found = problems(data)
    assert "above tiers[0].min_priority" in found["tiers[2].min_priority"]


def test_share_window_is_configurable_and_at_least_one() -> None:
    data = shares(composer={"mix": {"hot": 4, "warm": 6, "cold": 10}, "share_window": 500})
    assert parse_config(data).composer.share_window == 500
    data["composer"]["share_window"] = 0
    assert "composer.share_window" in problems(data)


def test_a_share_ladder_round_trips_through_mapping_and_toml() -> None:
    config = parse_config(shares())
    assert parse_config(config_to_mapping(config)) == config
    text = render_config(config)
    assert parse_config(tomllib.loads(text)) == config
    assert "share = 0.1" in text
