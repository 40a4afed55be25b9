"""The ``[budget]`` section of the configuration: the daily budget's keys.

Apart from ``policies.config`` so the budget's logic (``policies.budget``)
and the config schema can both import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from tierbatch.policies.config_reader import (
    NON_NEGATIVE,
    POSITIVE,
    TableReader,
    did_you_mean,
    join_key,
)

__all__ = ["BudgetConfig", "OnExhausted", "parse_budget"]


class OnExhausted(StrEnum):
    """What a tier does when the budget lets it spend no more today."""

    STOP = "stop"  # interactive calls wait for the next midnight
    BATCH = "batch"  # the tier moves to the Batch API (where batch mode exists)


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """``usd_per_day``: the day's budget over every tier (0: no budget);
    ``tiers``: optional caps of single tiers (tier name -> USD per day);
    ``output_ratio``: output tokens per input token assumed before a model
    has answered (then its measured ratio takes over); ``on_exhausted``:
    see ``OnExhausted``."""

    usd_per_day: float = 0.0
    tiers: Mapping[str, float] = field(default_factory=dict)
    on_exhausted: OnExhausted = OnExhausted.STOP
    output_ratio: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.usd_per_day > 0 or bool(self.tiers)


def parse_budget(r: TableReader, tier_names: Sequence[str]) -> BudgetConfig:
    """Reads ``[budget]`` (and ``[budget.tiers]``); every problem is recorded in ``r``."""
    d = BudgetConfig()
    tiers: dict[str, float] = {}
    caps = r.table("tiers")
    for name, value in caps.entries():
        key = join_key(caps.path, name)
        if tier_names and name not in tier_names:
            r.problems.add(
                key,
                f"no tier named {name!r}{did_you_mean(name, tier_names)}; "
                f"tiers: {', '.join(tier_names)}",
            )
        tiers[name] = caps.check_number(key, value, POSITIVE)
    budget = BudgetConfig(
        usd_per_day=r.number("usd_per_day", d.usd_per_day, NON_NEGATIVE),
        tiers=tiers,
        on_exhausted=OnExhausted(
            r.choice("on_exhausted", d.on_exhausted.value, tuple(o.value for o in OnExhausted))
        ),
        output_ratio=r.number("output_ratio", d.output_ratio, NON_NEGATIVE),
    )
    r.finish()
    return budget
