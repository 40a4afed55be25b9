"""What a Batch API request costs, from the whole of its ``usage_metadata``.

Gemini bills a request's prompt tokens at the input price -- those served
from its context cache (``cached_content_token_count``, part of
``prompt_token_count``) at a reduced share of it -- and its answer and
thinking tokens (``candidates_token_count``, ``thoughts_token_count``) at
the output price; a batch request pays ``discount`` of all that (half).
The same counts priced at the interactive rate are what the request would
have cost as an interactive call: the difference is the money batch saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tierbatch.policies.config import ModelSpec

__all__ = ["TokenCounts", "split_cost", "tokens_cost_usd"]


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """One answer's ``usage_metadata``: ``prompt`` (cached included),
    ``output`` (the candidates), ``thoughts`` and ``cached``."""

    prompt: int = 0
    output: int = 0
    thoughts: int = 0
    cached: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.prompt + other.prompt,
            self.output + other.output,
            self.thoughts + other.thoughts,
            self.cached + other.cached,
        )

    @property
    def billed_output(self) -> int:
        return max(0, self.output) + max(0, self.thoughts)


def tokens_cost_usd(
    model: ModelSpec, tokens: TokenCounts, *, discount: float = 1.0, cached_share: float = 1.0
) -> float:
    """USD for ``tokens`` at ``model``'s list prices times ``discount``;
    a cached prompt token costs ``cached_share`` of an input token.
    Negative counts (a broken answer) cost nothing."""
    if not 0 < discount <= 1 or not 0 <= cached_share <= 1:
        raise ValueError(
            f"discount in (0, 1] and cached_share in [0, 1]: {discount}, {cached_share}"
        )
    cached = min(max(0, tokens.cached), max(0, tokens.prompt))
    fresh = max(0, tokens.prompt) - cached
    input_usd = (fresh + cached * cached_share) * model.price_in_per_m
    output_usd = tokens.billed_output * model.price_out_per_m
    return (input_usd + output_usd) / 1e6 * discount


def split_cost(total_usd: float, weights: Sequence[int]) -> list[float]:
    """``total_usd`` shared in proportion to ``weights`` (equal shares when
    they are all 0)."""
    if not weights:
        return []
    total = sum(max(0, w) for w in weights)
    if total == 0:
        return [total_usd / len(weights)] * len(weights)
    return [total_usd * max(0, w) / total for w in weights]
