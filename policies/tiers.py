"""The tier ladder: which tier a priority falls in, and which models serve it.

Tiers are held highest first (index 0 is the hottest tier), so "one tier
higher" is always ``index - 1``; that is how aging promotes an article that
has waited too long.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierbatch.policies.config import TierSpec, ladder_order


class UnknownTierError(KeyError):
    """A tier name that is not on the ladder."""


class TierLadder:
    """Tiers ordered by ``min_priority``, highest first (a ladder with
    shares keeps the order it is given: see ``config.ladder_order``).

    The lowest tier catches every priority, even one below its own
    ``min_priority``, so no article is ever left without a tier. Tiers with
    equal thresholds keep the order they were given in.
    """

    def __init__(self, tiers: Sequence[TierSpec], global_fallback: str) -> None:
        if not tiers:
            raise ValueError("a tier ladder needs at least one tier")
        ordered = ladder_order(tiers)
        index: dict[str, int] = {}
        for i, tier in enumerate(ordered):
            if tier.name in index:
                raise ValueError(f"duplicate tier name {tier.name!r}")
            index[tier.name] = i
        self._tiers = ordered
        self._index = index
        self._global_fallback = global_fallback
        self._chains = tuple(self._build_chain(tier) for tier in ordered)

    def _build_chain(self, tier: TierSpec) -> tuple[str, ...]:
        chain: list[str] = []
        for model in (tier.model, tier.fallback_model, self._global_fallback):
            if model and model not in chain:
                chain.append(model)
        return tuple(chain)

    @property
    def tiers(self) -> tuple[TierSpec, ...]:
        return self._tiers

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(tier.name for tier in self._tiers)

    @property
    def global_fallback(self) -> str:
        return self._global_fallback

    def __len__(self) -> int:
        return len(self._tiers)

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self._tiers):
            raise IndexError(f"tier index {index} outside 0..{len(self._tiers) - 1}")

    def spec(self, index: int) -> TierSpec:
        self._check(index)
        return self._tiers[index]

    @property
    def uses_shares(self) -> bool:
        """Some tier takes a share of the articles rather than a threshold:
        tiers then come from ``policies.tier_assignment``, not ``index_for``."""
        return any(tier.share is not None for tier in self._tiers)

    def index_for(self, priority: float) -> int:
        """The highest tier whose threshold ``priority`` reaches; else the lowest.

        NaN reaches no threshold, so it lands in the lowest tier. Share tiers
        are not known here (their thresholds move): see ``uses_shares``.
        """
        for i, tier in enumerate(self._tiers[:-1]):
            if priority >= tier.min_priority:
                return i
        return len(self._tiers) - 1

    def by_name(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise UnknownTierError(name) from None

    def chain(self, index: int) -> tuple[str, ...]:
        """Models to try for the tier, in order: its model, its fallback, the
        global fallback; each at most once, absent ones skipped."""
        self._check(index)
        return self._chains[index]

    def promoted(self, index: int) -> int:
        """The tier an aged article of tier ``index`` is served as: one higher."""
        self._check(index)
        return max(0, index - 1)
