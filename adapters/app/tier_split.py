"""The tier split printed at the start of ``tierbatch run``: a line per tier
(articles of the input and their share), and a warning line per tier the
input leaves empty. Its own small module so other start-of-run lines
(``plan:``) sit beside it without touching it."""

from __future__ import annotations

from tierbatch.policies.tier_assignment import TierCount, TierSplit


def split_lines(split: TierSplit, *, of: str = "the input") -> list[str]:
    """``tiers: ...`` then one indented line per tier, highest first;
    ``of`` names what was split (``run``: the input; ``plan``: the backlog)."""
    how = (
        f"by share over {split.window} recent priorities"
        if split.uses_shares
        else "by min_priority"
    )
    lines = [f"tiers: {split.total} article(s) of {of}, {how}"]
    width = max((len(t.tier) for t in split.tiers), default=0)
    last = len(split.tiers) - 1
    for i, t in enumerate(split.tiers):
        lines.append(
            f"  {t.tier:<{width}}  {t.articles:>7} article(s)  {t.fraction:6.1%}  "
            f"({_rule(t, lowest=i == last)})"
        )
    return lines


def empty_tier_warnings(split: TierSplit) -> list[str]:
    """A warning line per tier that receives no article of the input."""
    out = []
    for t in split.tiers:
        if t.tier not in split.empty:
            continue
        if t.share is None:
            hint = (
                f"no article's priority reaches its min_priority {t.min_priority:g}; "
                "give the tier a share (e.g. share = 0.1) to fill it whatever the "
                "feed's priorities, or lower the threshold"
            )
        else:
            hint = "ties at the thresholds above took its articles"
        out.append(f"warning: tier {t.tier} receives no article of the input: {hint}")
    return out


def _rule(t: TierCount, *, lowest: bool) -> str:
    if t.share is not None:
        return f"share {t.share:.0%}: min_priority >= {t.min_priority:.3f}"
    if lowest:
        return "the rest"
    return f"min_priority >= {t.min_priority:g}"
