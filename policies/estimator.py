"""What the provider really admits, learnt from its answers.

Configured limits are ceilings, not truths: the project may be on a smaller
tier, another client may spend the same quota, and Gemini does not say how
it enforces a per-minute limit -- a rolling window, or a token bucket that
refills at the limit's rate and holds a few seconds' worth. A registry that
assumes the wrong shape pays for it: a whole window's burst against a bucket
gets most of it refused. ``LimitEstimate`` keeps, per model:

* ``rpm``/``tpm``: the effective per-window limits, at most the configured
  ones. A 429 that says "per minute" while the provider accepted less than
  the limit lowers the limit to what it accepted, less a margin
  (multiplicative decrease; at the configured limit only when it accepted
  less by more than the margin: our token counts are estimates, and our
  window and the provider's are a trip apart); every clean window, where
  we used the limit without a 429, raises it by a step towards the
  configured ceiling (additive increase; a share of the learnt limit, so a
  small one gains a request only every few windows).
* ``burst``: how many requests may go at once, on top of the steady rate
  ``rpm / window``. It starts modest and doubles while bursts are accepted
  (each success of a request sent at the burst's edge adds one, as TCP's
  slow start), up to a whole window -- what a rolling window allows. A
  burst that meets short 429s (the provider would admit the next request
  within seconds: a bucket, not a full window) shrinks it to what the
  provider absorbed, less a margin.

Evidence: a 429's ``retryDelay`` shorter than ``short_delay_s`` is "the next
token is near" (a bucket, or our burst hit a window edge); a longer one is
"your window is full" (a rolling window, or another client). A refused
request holds a window place only on window evidence: a bucket never
counted it.

A short 429 while our own window is nearly full of the limit it names
(``EDGE_FULL``), that limit still the configured one and the provider not
known to be a bucket, is no evidence of a lower limit or a smaller burst:
we were sending at the limit and the provider counted a little differently
-- our oldest requests reached it late (behind a busy client), or carried
more tokens than estimated, so it freed their places after we did. Cutting
on it took a tenth off the next windows each time and read a rolling window
as a bucket. Such an edge 429 makes the model wait as the provider says; a
requests one also widens ``edge_guard_s``, so our window entries expire that
much later from then on (capped at ``EDGE_GUARD_CAP`` of a window, decaying
while windows stay clean). Edge 429s in ``EDGE_DOUBT_WINDOWS`` windows in a
row mean the limit may really be lower; until a clean window they are read
as any short 429.

Under a bucket, paced at its rate, a request that reached the provider a
little sooner after the last than we sent it is refused with its token due
within a sliver of a refill interval (``JITTER``): never evidence of a
lower rate, it lengthens the pacing's intervals by that much
(``pace_guard_s``, decaying like the edge guard). Below a configured limit
the estimate is probing back up, and any refusal near the top is the probe
finding the ceiling.

Pure: every method takes ``now``; the quota policy owns one per model.

Longer than the house's ~450 lines on purpose: one reading of one model's
429s -- the limits, the burst, the guards and the evidence that moves each
share the same state and are decided together per 429, so splitting them
would scatter one decision over several modules.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

__all__ = ["EstimatorConfig", "LimitEstimate", "LimiterShape"]

_SNAPSHOT_KEYS: Final = ("rpm", "tpm", "burst", "shape", "clean_windows")

# A short 429 while our window holds this share of the limit it names is
# the window's edge, not another client's spending.
EDGE_FULL: Final = 0.8
# The edge guard's cap, as a share of the window (a longer delay is not a
# lag), and its decay per clean window.
EDGE_GUARD_CAP: Final = 0.05
EDGE_GUARD_DECAY: Final = 0.95
# A short 429 whose next token was due within this share of a refill
# interval is the trip's jitter, never evidence of a lower rate.
JITTER: Final = 0.1
# Windows in a row with edge 429s before they stop being read as edges.
EDGE_DOUBT_WINDOWS: Final = 3
# Refusals of a full window (at the configured limit) that are never
# evidence of a lower one, whatever they carried: packed requests of a
# twelfth of the tpm each, two refused at a window's start passed the
# margin and halved flash's tpm for good, alone on a rolling window. A limit
# over-claimed twice over is refused by half a window.
FULL_STRAGGLERS: Final = 2


class LimiterShape(StrEnum):
    UNKNOWN = "unknown"
    WINDOW = "window"
    BUCKET = "bucket"


@dataclass(frozen=True, slots=True)
class EstimatorConfig:
    """``pacing``: pace at the limit's rate with a learnt burst (off: a whole
    window at once, as for a known rolling window); ``learn``: lower and
    raise the limits from the evidence (off: the configured limits are the
    truth). ``margin``: how far below what the provider accepted a learnt
    limit is set; ``increase``: the additive step per clean window, as a
    share of the learnt limit; ``initial_burst``: the first burst, as a
    share of a window's requests; ``short_delay_s``: a 429 delay below this
    is burst evidence (default: a tenth of the window, and never less than
    two of the limit's refill intervals, ``2 * window / rpm``: a bucket of a
    small limit gives its next token seconds apart)."""

    window_s: float = 60.0
    pacing: bool = True
    learn: bool = True
    margin: float = 0.1
    increase: float = 0.05
    initial_burst: float = 0.25
    short_delay_s: float | None = None

    @property
    def short_delay(self) -> float:
        return self.window_s / 10 if self.short_delay_s is None else self.short_delay_s


class LimitEstimate:
    """One model's learnt limits and burst; see the module docstring.

    ``rpm``/``tpm`` 0 mean unlimited (nothing to learn)."""

    def __init__(self, rpm: int, tpm: int, config: EstimatorConfig) -> None:
        self.config = config
        self.configured_rpm = rpm
        self.configured_tpm = tpm
        self.rpm = rpm
        self.tpm = tpm
        if rpm == 0 or not config.pacing:
            self.burst = float(rpm)
        else:
            self.burst = max(1.0, float(math.ceil(rpm * config.initial_burst)))
        self.shape = LimiterShape.UNKNOWN if config.pacing else LimiterShape.WINDOW
        self.clean_windows = 0
        self._rpm_credit = 0.0  # additive increase, in fractions of a request
        # 429s over the last window: (when, the refused request's tokens).
        self._refusals: deque[tuple[float, int]] = deque()
        # Slow start: the burst doubles until the first 429 or a whole window.
        self.probing = config.pacing and rpm > 0 and self.burst < rpm
        self._level = self.burst
        self._level_at = -math.inf
        # The input tokens' pacing level (full until the first grant).
        self._tlevel = math.inf
        self._tlevel_at = -math.inf
        self._window_started: float | None = None
        self._window_limited = False
        self._window_refused = False
        self._last_cut = -math.inf
        # The burst last cut for short 429s: what went in it, what of it
        # was refused since (every refusal of one burst tells how much of it
        # the provider did not absorb).
        self._cut_burst = 0.0
        self._cut_refused = 0
        # The last short refusal of a paced request (at the pacing's edge).
        self._edge_refused_at = -math.inf
        # How much later than the provider's our window entries expire,
        # and how much longer than the limit's our pacing intervals are.
        self.edge_guard_s = 0.0
        self.pace_guard_s = 0.0
        self._guard_before = 0.0
        self._guard_raised_at = -math.inf
        self._window_edged = False
        self._edged_windows = 0
        self._edges_doubted = False

    # ---- the pacing bucket -------------------------------------------------------

    @property
    def rate_per_s(self) -> float:
        """The pacing's rate: the limit's, each interval lengthened by the
        learnt ``pace_guard_s``."""
        if self.rpm == 0:
            return math.inf
        return 1.0 / (self.config.window_s / self.rpm + self.pace_guard_s)

    @property
    def gating(self) -> bool:
        """Whether the pacing holds requests back now: not against a known
        rolling window, whose own count is the limit (paced at the tokens'
        rate there, the window's freed places went out a trickle at a time:
        at Gemini's own 60 s window and a thousand requests a window, under
        70% of the bound against 92% with pacing off)."""
        return self.paced and self.shape is not LimiterShape.WINDOW

    @property
    def short_delay(self) -> float:
        """A 429 delay below this is "the next token is near"; see
        ``EstimatorConfig``."""
        floor = 2 * self.config.window_s / self.rpm if self.rpm else 0.0
        return max(self.config.short_delay, floor)

    @property
    def paced(self) -> bool:
        """Whether the pacing bucket can hold a request back at all."""
        return self.rpm > 0 and self.config.pacing

    def level(self, now: float) -> float:
        """Requests that may go at once now."""
        if not self.gating:
            return math.inf
        if self._level_at == -math.inf:
            return self._level
        elapsed = max(0.0, now - self._level_at)
        return min(self.burst, self._level + elapsed * self.rate_per_s)

    @property
    def token_burst(self) -> float:
        """Input tokens that may go at once: the same share of a window's
        tokens as the burst is of its requests (a bucket holds so many
        seconds' worth of each limit)."""
        if not self.gating or not self.tpm:
            return math.inf
        return self.tpm * min(1.0, self.burst / self.rpm)

    def token_level(self, now: float) -> float:
        """Input tokens that may go at once now (paced like the requests)."""
        cap = self.token_burst
        if math.isinf(cap) or self._tlevel_at == -math.inf:
            return cap
        elapsed = max(0.0, now - self._tlevel_at)
        return min(cap, self._tlevel + elapsed * self.tpm / self.config.window_s)

    def ready_at(self, now: float, tokens: int = 0) -> float:
        """When the pacing lets one more request (of ``tokens`` input
        tokens) go (``now`` if it may)."""
        level = self.level(now)
        at = now if level >= 1 - 1e-9 else now + (1 - level) / self.rate_per_s
        if tokens > 0:
            cap = self.token_burst
            if not math.isinf(cap):
                need = min(float(tokens), cap)
                have = self.token_level(now)
                if have < need - 1e-9:
                    at = max(at, now + (need - have) * self.config.window_s / self.tpm)
        return at

    def on_grant(self, now: float, *, near_limit: bool = False, tokens: int = 0) -> bool:
        """A request goes now. Returns whether it went at the burst's edge
        (the pacing was the limit), which is what slow start grows on.
        ``near_limit``: the window is nearly full, so this window counts as
        one that used the limit (a clean one raises the learnt limits)."""
        if not self.gating:
            self._tick(now, limited=near_limit)
            return False
        if tokens > 0 and not math.isinf(self.token_burst):
            self._tlevel = self.token_level(now) - tokens
            self._tlevel_at = now
        level = self.level(now)
        self._level = max(0.0, level - 1)
        self._level_at = now
        at_edge = level < 2
        self._tick(now, limited=at_edge or near_limit)
        return at_edge

    # ---- evidence ------------------------------------------------------------------

    def on_success(self, now: float, at_edge: bool, *, tokens: int = 0) -> None:
        """A request (of ``tokens`` input tokens) was accepted. During slow
        start each acceptance grows the burst by one and the pacing's level
        by two -- its own place and one more, in requests and in tokens --
        so the burst doubles per round trip (a level grown by one only let
        one request follow each answer, and a window's first requests went
        spread over most of the window: against a rolling window, the last
        window of a drain ended that much later). ``at_edge`` is kept for
        the evidence a later 429 gives."""
        self._tick(now)
        if not (self.probing and self.rpm > 0):
            return
        self.burst = min(float(self.rpm), self.burst + 1)
        self._level = min(self.burst, self.level(now) + 2)
        self._level_at = now
        cap = self.token_burst
        if tokens > 0 and not math.isinf(cap):
            self._tlevel = min(cap, self.token_level(now) + 2 * tokens)
            self._tlevel_at = now
        if self.burst >= self.rpm:
            # A whole window may go at once: a rolling window, which the
            # pacing holds nothing back from (``gating``).
            self.probing = False
            if self.shape is LimiterShape.UNKNOWN:
                self.shape = LimiterShape.WINDOW

    def on_rate_limited(
        self,
        now: float,
        *,
        tokens_scope: bool,
        retry_delay_s: float | None,
        accepted_in_window: int,
        tokens_in_window: int,
        in_burst: bool,
        observed_s: float | None = None,
        sent_at: float | None = None,
        window_share: float = 0.0,
        tokens: int = 0,
    ) -> bool:
        """A per-minute 429. ``accepted_in_window``/``tokens_in_window``: what
        the provider accepted from us over the last window; ``window_share``:
        how full our own window is of the limit the 429 names (requests or
        tokens, counting what is in flight); ``observed_s``:
        how long we have been sending to it (less than a window just after
        start: a rate, not a window's count, is then what was accepted);
        ``in_burst``: the request went within a burst (the pacing was not
        the limit); ``sent_at``: when it went -- a refusal of a request sent
        before the last cut says nothing new (it saw the old limits), so
        one burst of 429s cuts once, not once per 429; ``tokens``: the
        refused request's input tokens.

        Returns whether the refused request should keep its window place:
        only on window evidence (a bucket never counted it)."""
        self._tick(now)
        self._window_refused = True
        self.clean_windows = 0
        self._rpm_credit = 0.0
        if not self.config.learn:
            return True
        # The last window's refusals (pruned here, so a long run keeps no more).
        horizon = now - self.config.window_s
        while self._refusals and self._refusals[0][0] <= horizon:
            self._refusals.popleft()
        short = retry_delay_s is not None and 0 < retry_delay_s < self.short_delay
        if (
            short
            and window_share >= EDGE_FULL
            and not self._edges_doubted
            and self.shape is not LimiterShape.BUCKET
            and self._at_ceiling(tokens=tokens_scope)
        ):
            # An edge is not counted among the refusals that, past the
            # margin, say a full window's limit is lower: a window's edge
            # 429s (a tenth of a window's tokens, when its estimates ran a
            # tenth low) and one later refusal cut flash-lite's tpm to 62%
            # for the rest of a drain, alone on a rolling window.
            assert retry_delay_s is not None
            self._at_window_edge(now, retry_delay_s, sent_at, tokens_scope)
            return False
        self._refusals.append((now, max(0, tokens)))
        margin = 1 - self.config.margin
        if sent_at is not None and sent_at < self._last_cut:
            if short and self._cut_burst > 0:
                # Another refusal of the burst already cut: less was absorbed.
                self._cut_refused += 1
                absorbed = max(1.0, self._cut_burst - self._cut_refused)
                self.burst = max(1.0, min(self.burst, math.floor(absorbed * margin)))
                self._sync(now, retry_delay_s, tokens=tokens_scope)
            return not short
        if tokens_scope and short and not self.paced:
            # Whole windows at once, refused with the tokens about to free
            # (our window not full: its estimates were low). Not a lower
            # limit: cutting the tpm to what our window holds just after its
            # edge (little) took the next three windows to a seventh of the
            # quota. Wait as it says.
            self._sync(now, retry_delay_s, tokens=True)
            return True
        if tokens_scope and not (short and self.paced):
            if self._lowered(tokens_in_window, tokens=True, window_share=window_share):
                self._last_cut, self._cut_burst = now, 0.0
                self.tpm = _cut(self.tpm, tokens_in_window * margin)
            return True
        last_cut = self._last_cut
        self._last_cut = now
        self._cut_burst = 0.0
        # From here on a short tokens-per-minute 429 reads like a requests
        # one: a token bucket refusing a burst (of large packed requests)
        # shrinks the burst, a lone refusal at the pacing's edge is its
        # phase, and only repeated ones lower the learnt tpm.
        if short and self.paced and (in_burst or self.probing) and self.burst > 1:
            # The burst was too big for what the provider absorbs at once.
            self.shape = LimiterShape.BUCKET
            sent = max(1.0, self._absorbed(now))
            self._cut_burst, self._cut_refused = sent, 1
            absorbed = max(1.0, sent - 1)
            self.burst = max(1.0, min(self.burst, math.floor(absorbed * margin)))
            self.probing = False
            self._sync(now, retry_delay_s, tokens=tokens_scope)
            return False
        if short and self.paced and self.shape is not LimiterShape.WINDOW:
            # Refused at the pacing's edge with the next token near: our
            # pacing ran a little ahead of the provider's bucket (its phase,
            # not its rate). Wait as it says; only a second such refusal
            # within a window is evidence of a lower rate, and never one
            # whose token was due within a sliver of a refill interval
            # (jitter: this request reached it sooner after the last than
            # we sent it; a bucket holding one request refuses on it).
            self.probing = False
            assert retry_delay_s is not None
            jitter = self._jittered(retry_delay_s)
            self._sync(now, retry_delay_s, tokens=tokens_scope)
            if jitter:
                return False
            # (Below the configured limit we are probing back up: a refusal
            # there is the probe finding the ceiling.)
            lone = now - self._edge_refused_at >= self.config.window_s
            self._edge_refused_at = now
            if lone and self._at_ceiling(tokens=tokens_scope):
                return False
        # Our steady rate, or the window as a whole, is more than it admits.
        self.probing = False
        if tokens_scope:
            # (short, paced: a refill-rate refusal of tokens)
            window = self.config.window_s
            span = window if observed_s is None else min(window, observed_s)
            took = tokens_in_window * window / max(span, self.config.short_delay)
            if self._lowered(took, tokens=True, window_share=window_share):
                self.tpm = _cut(self.tpm, took * margin)
            else:
                self._last_cut = last_cut
            return False
        accepted = float(accepted_in_window)
        if short:
            # A refill-rate refusal: what it accepted per second, per window.
            window = self.config.window_s
            span = window if observed_s is None else min(window, observed_s)
            accepted = accepted * window / max(span, self.config.short_delay)
        elif self.shape is LimiterShape.UNKNOWN:
            self.shape = LimiterShape.WINDOW
        if self._lowered(accepted, tokens=False, window_share=window_share):
            self.rpm = _cut(self.rpm, accepted * margin)
            self.burst = min(self.burst, float(self.rpm))
        else:
            self._last_cut = last_cut
        return not short

    def _sync(self, now: float, retry_delay_s: float | None, *, tokens: bool = False) -> None:
        """Align the pacing with the provider's: it admits the next request
        after ``retry_delay_s``, so the level reaches one request then (for
        a tokens refusal: the tokens' level starts again from empty). The
        refused request's own place in the level comes back first: the
        provider never counted it, and keeping it cost a whole refill
        interval per refusal."""
        delay = 0.0 if retry_delay_s is None else retry_delay_s
        self._level = min(self.level(now) + 1.0, 1.0 - delay * self.rate_per_s)
        self._level_at = now
        if tokens and not math.isinf(self.token_burst):
            self._tlevel = min(self.token_level(now), 0.0)
            self._tlevel_at = now

    def _at_window_edge(
        self, now: float, delay: float, sent_at: float | None, tokens: bool
    ) -> None:
        """Refused at a rolling window's edge: wait as the provider says,
        and expire our entries later by what it said; one edge's refusals,
        all sent with the old guard, raise it once."""
        self.probing = False
        self._window_edged = True
        cap = EDGE_GUARD_CAP * self.config.window_s
        # Only a requests 429 with a short delay is a lag for certain: our
        # token counts are estimates until the answers come (the provider's
        # window held more than we thought), and a long delay is the next
        # place, not a lag.
        if not tokens and delay <= cap:
            if sent_at is not None and sent_at < self._guard_raised_at:
                self.edge_guard_s = min(cap, max(self.edge_guard_s, self._guard_before + delay))
            else:
                self._guard_before = self.edge_guard_s
                self.edge_guard_s = min(cap, self.edge_guard_s + delay)
                self._guard_raised_at = now
        self._sync(now, delay, tokens=tokens)

    def _at_ceiling(self, *, tokens: bool) -> bool:
        """Whether the limit a 429 names is still the configured one. Below
        it we are probing back up (additive increase), and a refusal near
        the top is the probe finding the ceiling: evidence, not an edge."""
        if tokens:
            return self.tpm == self.configured_tpm
        return self.rpm == self.configured_rpm

    def _lowered(self, seen: float, *, tokens: bool, window_share: float) -> bool:
        """Whether a 429 says the limit is lower than the learnt one, the
        provider having accepted ``seen`` of it over the last window.

        What it accepted is known only as answers come, so at a window's
        edge -- our window full, the requests of its new burst in flight
        -- it reads low. There, with the limit still the configured one, a
        429 lowers it only once the window's refusals exceed the margin of
        the limit (a burst over-claiming it is refused by half; an estimate
        a little low, by a request)."""
        limit = self.tpm if tokens else self.rpm
        if not (self.configured_tpm if tokens else self.configured_rpm):
            return False
        if seen >= limit * self._confirmed(tokens=tokens):
            return False
        if window_share > 1.0:
            # Our own window holds more than the limit (requests that grew
            # after their grant: waiting packs merged into them): the 429 is
            # that excess, no evidence of a lower limit. Read as one, it
            # halved flash-lite's tpm under trickling arrivals (bench, daemon).
            return False
        if window_share >= EDGE_FULL and self._at_ceiling(tokens=tokens):
            refused = sum(t for _, t in self._refusals) if tokens else float(len(self._refusals))
            if refused <= self.config.margin * limit or len(self._refusals) <= FULL_STRAGGLERS:
                return False
        return True

    def _confirmed(self, *, tokens: bool) -> float:
        """The share of the limit the provider must have accepted for a 429
        not to lower it: at the configured ceiling, within the margin (our
        counts of tokens are estimates, the provider's window and ours are
        a trip apart); while probing back up, all of it."""
        return 1 - self.config.margin if self._at_ceiling(tokens=tokens) else 1.0

    def _jittered(self, delay: float) -> bool:
        """Whether a short 429 is the trip's jitter: its token was due within
        a sliver of a refill interval. Paced at the rate exactly, a bucket
        with no spare token refuses every request that reached it sooner
        after the last than we sent it, so under a bucket the pacing's
        intervals lengthen by the delay (up to that sliver)."""
        if not self.rpm:
            return False
        sliver = JITTER * self.config.window_s / self.rpm
        if delay >= sliver:
            return False
        if self.shape is LimiterShape.BUCKET:
            self.pace_guard_s = min(sliver, self.pace_guard_s + delay)
        return True

    def _absorbed(self, now: float) -> float:
        """How much of a burst the provider took at once: the burst less the
        refill it had meanwhile (what is left in our level is unused)."""
        return self.burst - max(0.0, self.level(now))

    # ---- clean windows -----------------------------------------------------------

    def _tick(self, now: float, *, limited: bool = False) -> None:
        """Account whole windows: one in which we used the limit and met no
        429 raises the limits by a step (additive increase)."""
        if self._window_started is None:
            self._window_started = now
        while now - self._window_started >= self.config.window_s:
            if self._window_limited and not self._window_refused:
                self._raise()
            self._doubt_edges()
            self._window_started += self.config.window_s
            self._window_limited = False
            self._window_refused = False
            self._window_edged = False
        self._window_limited = self._window_limited or limited

    def _doubt_edges(self) -> None:
        """At a window's end: a clean one lets the edge guard decay and
        trusts edge 429s again; edge 429s window after window stop being
        read as edges (the limit may really be lower)."""
        if not self._window_refused:
            self.edge_guard_s *= EDGE_GUARD_DECAY
            self.pace_guard_s *= EDGE_GUARD_DECAY
            self._edges_doubted = False
        if not self._window_edged:
            self._edged_windows = 0
            return
        self._edged_windows += 1
        if self._edged_windows >= EDGE_DOUBT_WINDOWS:
            self._edges_doubted = True
            self._edged_windows = 0

    def _raise(self) -> None:
        self.clean_windows += 1
        if not self.config.learn:
            return
        # Steps grow with the learnt limit (not the configured ceiling, which
        # may be far above the truth), so probing back up stays gentle; a
        # small limit gains a whole request only every few windows (one a
        # window took pro from 3 to 4 a window, a third above the truth).
        if self.configured_rpm and self.rpm < self.configured_rpm:
            self._rpm_credit += self.rpm * self.config.increase
            if self._rpm_credit >= 1:
                step = math.floor(self._rpm_credit)
                self._rpm_credit -= step
                self.rpm = min(self.configured_rpm, self.rpm + step)
        if self.configured_tpm and self.tpm < self.configured_tpm:
            step_t = max(1, math.ceil(self.tpm * self.config.increase))
            self.tpm = min(self.configured_tpm, self.tpm + step_t)
        if self.paced and self.burst < self.rpm and self.clean_windows % 4 == 0:
            self.burst = min(float(self.rpm), self.burst + 1)

    # ---- persistence -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "burst": self.burst,
            "shape": self.shape.value,
            "clean_windows": self.clean_windows,
            "edge_guard_s": self.edge_guard_s,
            "pace_guard_s": self.pace_guard_s,
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Take learnt values back, clipped to today's configured ceilings."""
        rpm, tpm = int(data["rpm"]), int(data["tpm"])
        self.rpm = (
            self.configured_rpm
            if not self.configured_rpm
            else max(1, min(rpm, self.configured_rpm))
        )
        self.tpm = (
            self.configured_tpm
            if not self.configured_tpm
            else max(1, min(tpm, self.configured_tpm))
        )
        if self.rpm:
            self.burst = max(1.0, min(float(data["burst"]), float(self.rpm)))
        self.shape = LimiterShape(str(data["shape"]))
        self.clean_windows = int(data["clean_windows"])
        # (absent from snapshots of older versions)
        self.edge_guard_s = min(_guard(data, "edge_guard_s"), EDGE_GUARD_CAP * self.config.window_s)
        interval = self.config.window_s / self.rpm if self.rpm else 0.0
        self.pace_guard_s = min(_guard(data, "pace_guard_s"), JITTER * interval)
        self.probing = (
            self.rpm > 0 and self.burst < self.rpm and self.shape is not (LimiterShape.BUCKET)
        )
        self._level = self.burst
        self._level_at = -math.inf
        self._tlevel = math.inf
        self._tlevel_at = -math.inf


def _guard(data: dict[str, Any], key: str) -> float:
    value = float(data.get(key, 0.0))
    if not 0.0 <= value < math.inf:
        raise ValueError(f"{key} must be >= 0, got {value!r}")
    return value


def _cut(limit: int, accepted: float) -> int:
    """A multiplicative decrease: to what was accepted, but never below half
    the current limit in one cut (nothing accepted can mean another client
    had the window, not that the limit is zero)."""
    return max(1, math.floor(limit / 2), math.floor(accepted))
