"""What calls cost, and each article's share of a packed call.

One place for the price arithmetic, so the per-article ``Done.cost_usd``
that the extractor records and the per-model cost of the end-of-run summary
can never drift apart: both go through ``cost_usd``.

A packed request reports one ``usageMetadata`` for all its articles; each
article is attributed the share of it that its estimated input tokens are of
the pack's, rounded to whole tokens. The shares are estimates, so the
per-article tokens need not sum exactly to the call's; the summary costs the
models from the registry's own usage counters, not from these shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tierbatch.policies.config import ModelSpec


def cost_usd(model: ModelSpec, input_tokens: int, output_tokens: int) -> float:
    """What a call cost at the model's list prices (USD per million tokens)."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got {input_tokens}, {output_tokens}")
    return (input_tokens * model.price_in_per_m + output_tokens * model.price_out_per_m) / 1e6


@dataclass(frozen=True, slots=True)
class ArticleShare:
    """One article's part of a packed call: its tokens and their cost."""

    input_tokens: int
    output_tokens: int
    cost_usd: float


def article_share(
    model: ModelSpec, weight: int, total_weight: int, input_tokens: int, output_tokens: int
) -> ArticleShare:
    """The share of a call of ``input_tokens``/``output_tokens`` that an
    article of estimated ``weight`` tokens takes in a pack of
    ``total_weight`` (at least 1, so an empty estimate cannot divide by 0).

    A provider that reports negative usage (a broken answer) costs nothing
    rather than a negative amount; the tokens are recorded as reported."""
    share = weight / max(1, total_weight)
    t_in, t_out = round(input_tokens * share), round(output_tokens * share)
    return ArticleShare(t_in, t_out, cost_usd(model, max(0, t_in), max(0, t_out)))


def attribute(
    model: ModelSpec, weights: Sequence[int], input_tokens: int, output_tokens: int
) -> list[ArticleShare]:
    """Every article's share of one packed call, in the order of ``weights``."""
    total = sum(weights)
    return [article_share(model, w, total, input_tokens, output_tokens) for w in weights]
