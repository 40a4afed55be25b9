"""What the configured tiers can still do when some of their models are gone.

A model the provider no longer has (a 404: retired or misspelt) would cost
every article routed to it an attempt. Checked before a run, a missing
model is routed around from the start instead -- as long as each tier keeps
at least one model of its chain (model, fallback, global fallback). A tier
left with none would fail every one of its articles, so a run should not
start: ``ModelCoverage.stranded`` names those tiers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from tierbatch.policies.config import TierSpec
from tierbatch.policies.tiers import TierLadder


@dataclass(frozen=True, slots=True)
class TierCoverage:
    """One tier's chain and which of its models are missing (chain order)."""

    tier: str
    chain: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def usable(self) -> tuple[str, ...]:
        return tuple(model for model in self.chain if model not in self.missing)

    @property
    def served(self) -> bool:
        return bool(self.usable)

    @property
    def primary_missing(self) -> bool:
        return bool(self.chain) and self.chain[0] in self.missing


@dataclass(frozen=True, slots=True)
class ModelCoverage:
    """Every tier's coverage, highest tier first."""

    missing: tuple[str, ...]
    tiers: tuple[TierCoverage, ...]

    @property
    def stranded(self) -> tuple[TierCoverage, ...]:
        """Tiers with no model left: a run would fail all their articles."""
        return tuple(t for t in self.tiers if not t.served)

    @property
    def degraded(self) -> tuple[TierCoverage, ...]:
        """Tiers still served, by a shorter chain."""
        return tuple(t for t in self.tiers if t.served and t.missing)


def assess_coverage(
    tiers: Sequence[TierSpec], global_fallback: str, missing: Collection[str]
) -> ModelCoverage:
    """The coverage of ``tiers`` when the models in ``missing`` are gone."""
    ladder = TierLadder(tiers, global_fallback)
    gone = set(missing)
    coverage = tuple(
        TierCoverage(
            tier=spec.name,
            chain=ladder.chain(index),
            missing=tuple(m for m in ladder.chain(index) if m in gone),
        )
        for index, spec in enumerate(ladder.tiers)
    )
    return ModelCoverage(missing=tuple(sorted(gone)), tiers=coverage)
