"""How the daily budget reads in the live display, the log, the summary and
``tierbatch status``: one line, the same words everywhere."""

from __future__ import annotations

from tierbatch.policies.budget import BudgetState
from tierbatch.policies.budget_config import OnExhausted


def budget_line(state: BudgetState, wall_now: float, *, batch_api: bool | None = None) -> str:
    """``budget: $0.42 spent of $5.00 today ...; moved to batch: cold;
    stopped: warm (...); resets in 3.2 h``.

    ``batch_api``: whether the process has the Batch API to move tiers to
    (None: not known here -- ``status`` -- so the budget's own verdict is shown)."""
    total = usd(state.usd_per_day) if state.usd_per_day else "no total"
    text = f"budget: {usd(state.spent_usd)} spent of {total} today"
    pending = state.committed_usd - state.spent_usd
    if pending > 1e-9:
        text += f" (+{usd(pending)} in flight)"
    if state.batch_usd > 1e-9:
        text += f"; batch jobs {usd(state.batch_usd)} of it"
    caps = [f"{t.tier} {usd(t.spent_usd)}/{usd(t.cap_usd)}" for t in state.tiers if t.cap_usd]
    if caps:
        text += "; tier caps: " + ", ".join(caps)
    moved = state.moved_tiers if batch_api is not False else ()
    if moved:
        text += f"; moved to batch: {', '.join(moved)} (until midnight, at the batch price)"
    stopped = [t for t in state.stopped_tiers if t not in moved]
    if stopped:
        text += f"; stopped: {', '.join(stopped)} ({exhausted_action(state, batch_api=batch_api)})"
    hours = max(0.0, state.resets_at - wall_now) / 3600
    return text + f"; resets in {hours:.1f} h"


def usd(amount: float) -> str:
    """Dollars to the cent from $1 up, to a hundredth of a cent below."""
    return f"${amount:.2f}" if abs(amount) >= 1 else f"${amount:.4f}"


def exhausted_action(state: BudgetState, *, batch_api: bool | None = None) -> str:
    """What a stopped tier that is not moved to batch does, in words."""
    if state.on_exhausted is OnExhausted.BATCH and batch_api is False:
        return (
            "on_exhausted = batch, but this provider has no Batch API (google-genai only): "
            "waiting for midnight"
        )
    return "waiting for midnight; articles stay queued"


__all__ = ["budget_line", "exhausted_action", "usd"]
