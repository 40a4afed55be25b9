"""A rolling window's running sums, answered in O(log n).

The quota policy asks, for every waiting request at the head of a model,
"when does the window have room for one more of ``t`` tokens?" -- the
moment the oldest entries' expiry brings both the request count and the
token sum under their limits. Scanning the window's entries for that costs
as many steps as the window holds requests (thousands at Gemini's limits),
on every decision. Instead, entries are summed into slots of expiry time
(a ring of ``slots`` slots across the window's span, each entry counted in
the slot its expiry rounds *up* to, so it never leaves early) and two
Fenwick trees over the ring answer prefix sums and "the first slot where
the sum reaches x" in O(log slots), however many requests the window holds.

Pure and single-owner, like the rest of ``policies``.
"""

from __future__ import annotations

import math

__all__ = ["RollingWindow"]


class _Fenwick:
    """Prefix sums over positions ``0..n-1`` with point updates."""

    __slots__ = ("_n", "_tree")

    def __init__(self, n: int) -> None:
        self._n = n
        self._tree = [0] * (n + 1)

    def add(self, index: int, delta: int) -> None:
        i = index + 1
        tree, n = self._tree, self._n
        while i <= n:
            tree[i] += delta
            i += i & -i

    def prefix(self, count: int) -> int:
        """Sum of positions ``0..count-1``."""
        total = 0
        i = count
        tree = self._tree
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total


class RollingWindow:
    """Requests and tokens whose window places expire at given times.

    ``span_s`` is how long one place lasts; every expiry lies in
    ``(now, now + span_s]`` when it is added. Times only move forward for
    ``expire``; the read-only queries may be asked about any ``now`` at or
    after the last ``expire``.
    """

    def __init__(self, span_s: float, slots: int = 1024) -> None:
        if not span_s > 0:
            raise ValueError(f"span_s must be > 0, got {span_s}")
        if slots < 8:
            raise ValueError(f"slots must be >= 8, got {slots}")
        self.span_s = span_s
        self._n = slots
        # Two slots of slack: one for rounding up, one for the slot ``now`` is in.
        self._width = span_s / (slots - 2)
        self._requests = _Fenwick(slots)
        self._tokens = _Fenwick(slots)
        self._slot_requests = [0] * slots
        self._slot_tokens = [0] * slots
        self._base: int | None = None  # absolute slot number of the oldest live slot
        self.requests = 0  # live sums (as of the last expire)
        self.tokens = 0

    # ---- slots -----------------------------------------------------------------

    def slot_of(self, expires_at: float) -> int:
        """The absolute slot an expiry is counted in (rounded up)."""
        return math.ceil(expires_at / self._width - 1e-9)

    def slot_end(self, slot: int) -> float:
        """When the places counted in ``slot`` have all expired."""
        return slot * self._width

    def _position(self, slot: int) -> int:
        return slot % self._n

    # ---- changes ---------------------------------------------------------------

    def add(self, expires_at: float, tokens: int, now: float) -> int:
        """Count one request of ``tokens`` expiring at ``expires_at``; returns
        its slot, to pass to ``remove`` or ``retoken`` later."""
        self.expire(now)
        slot = self.slot_of(expires_at)
        base = self._base
        if base is None:
            self._base = base = self.slot_of(now)
        slot = max(slot, base)
        if slot >= base + self._n:
            raise ValueError(
                f"expiry {expires_at} is beyond the window's span from {now} ({self.span_s} s)"
            )
        self._put(slot, 1, tokens)
        return slot

    def remove(self, slot: int, tokens: int) -> bool:
        """Stop counting one request of ``tokens`` in ``slot``; False (and no
        change) when that slot has already expired."""
        if self._base is None or slot < self._base:
            return False
        self._put(slot, -1, -tokens)
        return True

    def retoken(self, slot: int, old: int, new: int) -> bool:
        """A counted request used ``new`` tokens rather than the ``old`` estimate."""
        if self._base is None or slot < self._base:
            return False
        self._put(slot, 0, new - old)
        return True

    def _put(self, slot: int, requests: int, tokens: int) -> None:
        pos = self._position(slot)
        self._slot_requests[pos] += requests
        self._slot_tokens[pos] += tokens
        self._requests.add(pos, requests)
        self._tokens.add(pos, tokens)
        self.requests += requests
        self.tokens += tokens

    def expire(self, now: float) -> None:
        """Drop every place that has expired at ``now`` (amortised O(log n))."""
        base = self._base
        if base is None:
            return
        last = self.slot_of(now)  # slots ending at or before now are done
        if self.slot_end(last) > now:
            last -= 1
        if last < base:
            return
        if last - base >= self._n:  # everything expired: reset
            for pos in range(self._n):
                self._slot_requests[pos] = self._slot_tokens[pos] = 0
            self._requests = _Fenwick(self._n)
            self._tokens = _Fenwick(self._n)
            self.requests = self.tokens = 0
            self._base = last + 1
            return
        for slot in range(base, last + 1):
            pos = self._position(slot)
            r, t = self._slot_requests[pos], self._slot_tokens[pos]
            if r or t:
                self._slot_requests[pos] = self._slot_tokens[pos] = 0
                self._requests.add(pos, -r)
                self._tokens.add(pos, -t)
                self.requests -= r
                self.tokens -= t
        self._base = last + 1

    # ---- queries (read-only) ----------------------------------------------------

    def _cumulative(self, tree: _Fenwick, count: int) -> int:
        """Sum of the ``count`` slots from the base on (wrapping round the ring)."""
        if self._base is None or count <= 0:
            return 0
        count = min(count, self._n)
        start = self._position(self._base)
        end = start + count
        if end <= self._n:
            return tree.prefix(end) - tree.prefix(start)
        return tree.prefix(self._n) - tree.prefix(start) + tree.prefix(end - self._n)

    def _expired_count(self, now: float) -> int:
        """How many slots from the base have expired at ``now``."""
        if self._base is None:
            return 0
        last = self.slot_of(now)
        if self.slot_end(last) > now:
            last -= 1
        return max(0, last - self._base + 1)

    def live(self, now: float) -> tuple[int, int]:
        """Requests and tokens still in the window at ``now``."""
        gone = self._expired_count(now)
        if gone == 0:
            return self.requests, self.tokens
        return (
            self.requests - self._cumulative(self._requests, gone),
            self.tokens - self._cumulative(self._tokens, gone),
        )

    def frees_at(self, now: float, rpm: int, tpm: int, est_tokens: int) -> float:
        """When one more request of ``est_tokens`` fits under ``rpm`` requests
        and ``tpm`` tokens (0: no such limit): ``now``, or the end of the
        slot whose expiry brings both sums low enough."""
        requests, tokens = self.live(now)
        excess_r = requests + 1 - rpm if rpm else 0
        excess_t = tokens + est_tokens - tpm if tpm else 0
        if excess_r <= 0 and excess_t <= 0:
            return now
        gone = self._expired_count(now)
        need = 0
        for tree, excess in ((self._requests, excess_r), (self._tokens, excess_t)):
            if excess > 0:
                target = self._cumulative(tree, gone) + excess
                need = max(need, self._first_reaching(tree, target))
        if need > self._n or self._base is None:
            return math.inf  # more than the window holds: never
        return self.slot_end(self._base + need - 1)

    def _first_reaching(self, tree: _Fenwick, target: int) -> int:
        """The fewest slots from the base whose sum reaches ``target``
        (``n + 1`` when even all of them do not)."""
        lo, hi = 1, self._n
        if self._cumulative(tree, hi) < target:
            return self._n + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._cumulative(tree, mid) >= target:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def oldest_expiry(self, now: float) -> float | None:
        """When the oldest place still live at ``now`` expires; None if none."""
        if self.live(now)[0] <= 0:
            return None
        gone = self._expired_count(now)
        target = self._cumulative(self._requests, gone) + 1
        need = self._first_reaching(self._requests, target)
        if need > self._n or self._base is None:
            return None
        return self.slot_end(self._base + need - 1)
