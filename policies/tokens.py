"""Local input-token estimates, so quota can be reserved before a call.

Counting tokens through the API would cost a request of its own, so we
estimate from character counts (about four characters per token for English
news) plus the prompt's fixed overhead, then learn a correction from the
``usageMetadata`` that real answers report::

    raw      = overhead_tokens + per_article_overhead * n_articles + chars / chars_per_token
    estimate = ceil((offset + ratio * raw) * (1 + spread))

``ratio`` and ``offset`` are fitted to ``actual`` against ``raw`` (a least
squares line over exponentially weighted moments, ``learn``): the prompt's
real fixed part is rarely the assumed ``overhead_tokens``, and one ratio
through the origin, fitted to a mix of pack sizes, is low for the large
packs and high for the small ones (bench: four-article packs reported 0.9
of their raw estimate, ten-article ones ran a tenth over theirs, and a
window filled to its tokens limit with them was refused at its edge).
Until the requests seen differ enough in size to fit a line, ``offset`` is
0 and ``ratio`` follows ``actual / raw`` as an exponentially weighted
average. Both are clamped so that one odd answer cannot make the estimates
absurd. Learning from ``raw`` -- a pure function of the request's text --
and not from the estimate it carried matters: an estimate made before the
last corrections (a pack that waited for its quota) would otherwise pull
the correction away from the truth, the more the longer it waited.

An estimate is reserved against the tokens-per-minute quota before the call,
so it should err on the safe side: a mean estimate is low for half the
requests, and a window filled to its limit with them is refused at its edge
(a short 429) once in a few windows. ``spread`` follows the mean relative
error of the calibrated estimates the same way, and the estimate adds it,
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
# The line's moments remember about 1 / _FIT_SMOOTHING answers (more than the
# ratio's: several pack sizes must be in them); a line is fitted once this
# many answers came and their raw estimates spread by this share of their mean.
_FIT_SMOOTHING = 0.05
_FIT_MIN_SEEN = 8
_FIT_MIN_SPREAD = 0.1


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
        self._offset = 0.0
        self._through_origin = 1.0
        self._spread = 0.0
        # Exponentially weighted moments of (raw, actual) for the line.
        self._moments: tuple[float, float, float, float] | None = None
        self._seen = 0

    @property
    def ratio(self) -> float:
        """The learnt correction: observed tokens per raw estimated token
        (the slope of the fitted line, when there is one)."""
        return self._ratio

    @property
    def offset(self) -> float:
        """The fitted line's tokens at a raw estimate of 0 (0 until the
        requests seen differ enough in size to fit one)."""
        return self._offset

    @property
    def spread(self) -> float:
        """The learnt mean relative error of the calibrated estimate (the
        share an estimate adds to be on the safe side)."""
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
        mean = self._calibrated(self.raw(texts, n_articles))
        # Round up, but do not let floating-point dust (1200.0000000000002) add a token.
        return math.ceil(mean * (1 + self._spread) - _DUST)

    def _calibrated(self, raw: float) -> float:
        return max(0.0, self._offset + self._ratio * raw)

    def learn(self, raw: float, actual: int) -> None:
        """Learn from a call: ``raw`` is the ``raw`` estimate of what it
        carried, ``actual`` the input tokens ``usageMetadata`` reported."""
        if not raw > 0:
            raise ValueError(f"raw estimated tokens must be positive, got {raw}")
        if actual < 0:
            raise ValueError(f"actual tokens must be >= 0, got {actual}")
        mean = self._calibrated(raw)
        error = min(_MAX_SPREAD, abs(actual / mean - 1)) if mean > 0 else _MAX_SPREAD
        self._spread = (1 - self._smoothing) * self._spread + self._smoothing * error
        # The ratio through the origin, for as long as no line can be fitted.
        through_origin = (1 - self._smoothing) * self._through_origin + self._smoothing * (
            actual / raw
        )
        self._through_origin = min(self._max_ratio, max(self._min_ratio, through_origin))
        self._seen += 1
        self._ratio, self._offset = self._through_origin, 0.0
        self._fit(raw, float(actual))

    def _fit(self, x: float, y: float) -> None:
        """The least squares line through the weighted moments, taken when
        the sizes seen spread enough to fix it and it is sane (its slope
        within the clamps, no estimate below half the through-origin one
        over the sizes seen)."""
        s = _FIT_SMOOTHING
        if self._moments is None:
            self._moments = (x, y, x * x, x * y)
            return
        mx, my, mxx, mxy = self._moments
        mx, my = (1 - s) * mx + s * x, (1 - s) * my + s * y
        mxx, mxy = (1 - s) * mxx + s * x * x, (1 - s) * mxy + s * x * y
        self._moments = (mx, my, mxx, mxy)
        variance = mxx - mx * mx
        if self._seen < _FIT_MIN_SEEN or variance < (_FIT_MIN_SPREAD * mx) ** 2:
            return
        slope = (mxy - mx * my) / variance
        if not self._min_ratio <= slope <= self._max_ratio:
            return
        offset = my - slope * mx
        if offset < -0.5 * self._through_origin * mx:
            return
        self._ratio, self._offset = slope, offset

    def calibrate(self, estimated: int, actual: int) -> None:
        """Learn from a call whose raw estimate is not at hand: ``estimated``
        is what ``estimate`` returned for it, read back through the current
        correction (exact only if it has not changed since; ``learn`` is)."""
        if estimated <= 0:
            raise ValueError(f"estimated tokens must be positive, got {estimated}")
        mean = estimated / (1 + self._spread)
        raw = max(_DUST, (mean - self._offset) / self._ratio)
        self.learn(raw, actual)
