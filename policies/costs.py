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
from typing import Final

from tierbatch.policies.config import ModelSpec
from tierbatch.policies.outcomes import Usage

BATCH_PRICE_SHARE: Final = 0.5
"""The Gemini Batch API bills every token at half the interactive price."""


def cost_usd(
    model: ModelSpec,
    input_tokens: int,
    output_tokens: int,
    *,
    thinking_tokens: int = 0,
    cached_tokens: int = 0,
    batch: bool = False,
) -> float:
    """What a call cost at the model's list prices (USD per million tokens).

    ``input_tokens`` include the ``cached_tokens`` (billed at the cached
    price instead of the input price) and ``output_tokens`` include the
    ``thinking_tokens`` (billed at the thinking price), as Gemini's
    ``usageMetadata`` counts them; parts larger than their whole are
    clamped to it. ``batch``: at the Batch API's discount."""
    if min(input_tokens, output_tokens, thinking_tokens, cached_tokens) < 0:
        raise ValueError(
            "token counts must be >= 0, got "
            f"{input_tokens}, {output_tokens}, {thinking_tokens}, {cached_tokens}"
        )
    cached = min(cached_tokens, input_tokens)
    thinking = min(thinking_tokens, output_tokens)
    usd = (
        (input_tokens - cached) * model.price_in_per_m
        + cached * model.cached_price_per_m
        + (output_tokens - thinking) * model.price_out_per_m
        + thinking * model.thinking_price_per_m
    ) / 1e6
    return usd * BATCH_PRICE_SHARE if batch else usd


def usage_cost(model: ModelSpec, usage: Usage, *, batch: bool = False) -> float:
    """What a call that reported ``usage`` cost; negative counts (a broken
    answer) count as 0."""
    return cost_usd(
        model,
        max(0, usage.input_tokens),
        max(0, usage.output_tokens),
        thinking_tokens=max(0, usage.thinking_tokens),
        cached_tokens=max(0, usage.cached_tokens),
        batch=batch,
    )


def estimate_cost(model: ModelSpec, input_tokens: float, output_ratio: float) -> float:
    """What a call of ``input_tokens`` is expected to cost before it is sent:
    no cache hit assumed (the dearest case), and ``output_ratio`` output
    tokens per input token, at the output price."""
    tokens = max(0.0, input_tokens)
    return tokens * (model.price_in_per_m + output_ratio * model.price_out_per_m) / 1e6


@dataclass(frozen=True, slots=True)
class ArticleShare:
    """One article's part of a packed call: its tokens and their cost."""

    input_tokens: int
    output_tokens: int
    cost_usd: float


def article_share(
    model: ModelSpec,
    weight: int,
    total_weight: int,
    input_tokens: int,
    output_tokens: int,
    *,
    thinking_tokens: int = 0,
    cached_tokens: int = 0,
) -> ArticleShare:
    """The share of a call of ``input_tokens``/``output_tokens`` (of which
    ``cached_tokens``/``thinking_tokens``) that an article of estimated
    ``weight`` tokens takes in a pack of ``total_weight`` (at least 1, so an
    empty estimate cannot divide by 0).

    A provider that reports negative usage (a broken answer) costs nothing
    rather than a negative amount; the tokens are recorded as reported."""
    share = weight / max(1, total_weight)
    t_in, t_out = round(input_tokens * share), round(output_tokens * share)
    part = Usage(t_in, t_out, round(thinking_tokens * share), round(cached_tokens * share))
    return ArticleShare(t_in, t_out, usage_cost(model, part))


def attribute(
    model: ModelSpec,
    weights: Sequence[int],
    input_tokens: int,
    output_tokens: int,
    *,
    thinking_tokens: int = 0,
    cached_tokens: int = 0,
) -> list[ArticleShare]:
    """Every article's share of one packed call, in the order of ``weights``."""
    total = sum(weights)
    return [
        article_share(
            model,
            w,
            total,
            input_tokens,
            output_tokens,
            thinking_tokens=thinking_tokens,
            cached_tokens=cached_tokens,
        )
        for w in weights
    ]
