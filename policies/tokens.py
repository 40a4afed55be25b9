"""Local input-token estimates, so quota can be reserved before a call.

Counting tokens through the API would cost a request of its own, so we
estimate from character counts (about four characters per token for English
news) plus the prompt's fixed overhead, then learn a correction ratio from
the ``usageMetadata`` that real answers report::

    raw      = overhead_tokens + per_article_overhead * n_articles + chars / chars_per_token
    estimate = ceil(raw * ratio)

``ratio`` starts at 1 and follows ``actual / raw`` as an exponentially
weighted average, clamped to ``[min_ratio, max_ratio]`` so that one odd answer
cannot make the estimates absurd.

An estimate is reserved against the tokens-per-minute quota before the call,
so it should err on the safe side: a mean estimate is low for half the
requests, and a window filled to its limit with them is refused at its edge
(a short 429) once in a few windows. ``spread`` follows the mean relative
error of the calibrated estimates the same way, and the estimate adds it::

    estimate = ceil(raw * ratio * (1 + spread))

so most requests carry no more than they reserved; the reservation is
trued up to the answer's count when it comes (``policies.quota``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_DUST = 1e-9
# An odd answer (a cached prompt, a truncated one) must not make every
# estimate absurd: the spread counts errors up to this share.
_MAX_SPREAD = 0.25


class TokenEstimator:
    """Estimates a request's input tokens and calibrates itself on real usage."""

    def __init__(
        self,
        chars_per_token: float = 4.0,
        overhead_tokens: int = 300,
        per_article_overhead: int = 20,
        *,
        smoothing: float = 0.2,
        min_ratio: float = 0.25,
        max_ratio: float = 4.0,
    ) -> None:
        if not chars_per_token > 0:
            raise ValueError(f"chars_per_token must be positive, got {chars_per_token!r}")
        if overhead_tokens < 0 or per_article_overhead < 0:
            raise ValueError("token overheads must be >= 0")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing!r}")
        if not 0 < min_ratio <= 1 <= max_ratio:
            raise ValueError("need 0 < min_ratio <= 1 <= max_ratio")
        self._chars_per_token = chars_per_token
        self._overhead = overhead_tokens
        self._per_article = per_article_overhead
        self._smoothing = smoothing
        self._min_ratio = min_ratio
        self._max_ratio = max_ratio
        self._ratio = 1.0
        self._spread = 0.0

    @property
    def ratio(self) -> float:
        """The learnt correction: observed tokens per raw estimated token."""
        return self._ratio

    @property
    def spread(self) -> float:
        """The learnt mean relative error of ``raw * ratio`` (the share an
        estimate adds to be on the safe side)."""
        return self._spread

    def raw(self, texts: Sequence[str] | int, n_articles: int | None = None) -> float:
        """The uncalibrated estimate; see ``estimate`` for the arguments."""
        if isinstance(texts, int):
            total_chars = texts
            articles = 1 if n_articles is None else n_articles
        else:
            if isinstance(texts, str):
                texts = (texts,)
            total_chars = sum(len(text) for text in texts)
            articles = len(texts) if n_articles is None else n_articles
        if total_chars < 0 or articles < 0:
            raise ValueError("character and article counts must be >= 0")
        return self._overhead + self._per_article * articles + total_chars / self._chars_per_token

    def estimate(self, texts: Sequence[str] | int, n_articles: int | None = None) -> int:
        """Input tokens of one request, rounded up.

        ``texts`` is either the articles' texts (``n_articles`` then defaults
        to how many there are) or their total character count (``n_articles``
        then defaults to 1).
        """
        # Round up, but do not let floating-point dust (1200.0000000000002) add a token.
        return math.ceil(self.raw(texts, n_articles) * self._ratio * (1 + self._spread) - _DUST)

    def calibrate(self, estimated: int, actual: int) -> None:
        """Learn from a call: ``estimated`` is what ``estimate`` returned for it,
        ``actual`` the input tokens ``usageMetadata`` reported."""
        if estimated <= 0:
            raise ValueError(f"estimated tokens must be positive, got {estimated}")
        if actual < 0:
            raise ValueError(f"actual tokens must be >= 0, got {actual}")
        # estimated ~ raw * ratio * (1 + spread), so the mean estimate was
        # ``mean`` and the ratio that would have been exact is:
        mean = estimated / (1 + self._spread)
        target = self._ratio * actual / mean
        blended = (1 - self._smoothing) * self._ratio + self._smoothing * target
        self._ratio = min(self._max_ratio, max(self._min_ratio, blended))
        error = min(_MAX_SPREAD, abs(actual / mean - 1))
        self._spread = (1 - self._smoothing) * self._spread + self._smoothing * error
