"""What a Batch API request costs, from the whole of its ``usage_metadata``.

Gemini bills a request's prompt tokens at the input price -- those served
from its context cache (``cached_content_token_count``, part of
``prompt_token_count``) at the cached price -- and its answer and thinking
tokens (``candidates_token_count``, ``thoughts_token_count``) at the output
and thinking prices (``policies.costs``); a batch request pays
``discount`` of all that (half).
The same counts priced at the interactive rate are what the request would
have cost as an interactive call: the difference is the money batch saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tierbatch.policies.config import ModelSpec
from tierbatch.policies.costs import cost_usd

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


def tokens_cost_usd(model: ModelSpec, tokens: TokenCounts, *, discount: float = 1.0) -> float:
    """USD for ``tokens`` at ``model``'s list prices (``costs.cost_usd``:
    cached prompt tokens at the cached price, thinking tokens at the
    thinking price) times ``discount``. Negative counts (a broken answer)
    cost nothing."""
    if not 0 < discount <= 1:
        raise ValueError(f"discount must be in (0, 1], got {discount}")
    prompt, output, thoughts = max(0, tokens.prompt), max(0, tokens.output), max(0, tokens.thoughts)
    usd = cost_usd(
        model,
        prompt,
        output + thoughts,
        thinking_tokens=thoughts,
        cached_tokens=min(max(0, tokens.cached), prompt),
    )
    return usd * discount


def split_cost(total_usd: float, weights: Sequence[int]) -> list[float]:
    """``total_usd`` shared in proportion to ``weights`` (equal shares when
    they are all 0)."""
    if not weights:
        return []
    total = sum(max(0, w) for w in weights)
    if total == 0:
        return [total_usd / len(weights)] * len(weights)
    return [total_usd * max(0, w) / total for w in weights]
