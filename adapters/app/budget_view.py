"""How the daily budget reads in the live display, the log, the summary and
``tierbatch status``: one line, the same words everywhere."""

from __future__ import annotations

from tierbatch.policies.budget import BudgetState
from tierbatch.policies.budget_config import OnExhausted

# Whether this build can move a tier to the Batch API when its budget is
# spent; without it ``on_exhausted = "batch"`` stops the tier, and says so.
BATCH_MODE_AVAILABLE = False


def budget_line(state: BudgetState, wall_now: float) -> str:
    """``budget: $0.42 of $5.00 today ...; stopped: warm, cold (...); resets in 3.2 h``."""
    total = usd(state.usd_per_day) if state.usd_per_day else "no total"
    text = f"budget: {usd(state.spent_usd)} spent of {total} today"
    pending = state.committed_usd - state.spent_usd
    if pending > 1e-9:
        text += f" (+{usd(pending)} in flight)"
    caps = [f"{t.tier} {usd(t.spent_usd)}/{usd(t.cap_usd)}" for t in state.tiers if t.cap_usd]
    if caps:
        text += "; tier caps: " + ", ".join(caps)
    stopped = state.stopped_tiers
    if stopped:
        text += f"; stopped: {', '.join(stopped)} ({exhausted_action(state)})"
    hours = max(0.0, state.resets_at - wall_now) / 3600
    return text + f"; resets in {hours:.1f} h"


def usd(amount: float) -> str:
    """Dollars to the cent from $1 up, to a hundredth of a cent below."""
    return f"${amount:.2f}" if abs(amount) >= 1 else f"${amount:.4f}"


def exhausted_action(state: BudgetState) -> str:
    """What a stopped tier does, in words."""
    if state.on_exhausted is OnExhausted.BATCH:
        if BATCH_MODE_AVAILABLE:
            return "moved to the Batch API"
        return "on_exhausted = batch, but this build has no batch mode: waiting for midnight"
    return "waiting for midnight; articles stay queued"


__all__ = ["BATCH_MODE_AVAILABLE", "budget_line", "exhausted_action", "usd"]
