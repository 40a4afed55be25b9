"""A rolling window's running sums, answered in O(log n).

The quota policy asks, for every waiting request at the head of a model,
"when does the window have room for one more of ``t`` tokens?" -- the
moment the oldest entries' expiry brings both the request count and the
token sum under their limits. Scanning the entries for that costs as many
steps as the window holds requests (thousands at Gemini's limits), on every
decision. Here the entries sit in expiry order and Fenwick trees over their
positions hold the requests and tokens still counted, so prefix sums and
"the first entry at which the sum reaches x" take O(log n), and an entry
refunded in the middle is one point update.

A request's place counts from its grant, and moves to its send time when
it leaves (never earlier). Grants arrive in time order and so do sends,
but a send is usually marked after later grants: keeping both in one sorted
array would slide every later grant back on each send. So the window keeps
two lanes, each in expiry order and appended to at the end -- places still
counting from their grant, and places counting from their send -- and
answers a question about the window by a binary search over both.

Pure and single-owner, like the rest of ``policies``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

__all__ = ["RollingWindow"]


class _Fenwick:
    """Prefix sums over positions ``0..n-1`` with point updates."""

    __slots__ = ("_n", "_tree")

    def __init__(self, values: list[int]) -> None:
        n = len(values)
        tree = [0] * (n + 1)
        for i, value in enumerate(values, start=1):
            tree[i] += value
            parent = i + (i & -i)
            if parent <= n:
                tree[parent] += tree[i]
        self._n = n
        self._tree = tree

    def add(self, index: int, delta: int) -> None:
        i = index + 1
        tree, n = self._tree, self._n
        while i <= n:
            tree[i] += delta
            i += i & -i

    def prefix(self, count: int) -> int:
        """Sum of positions ``0..count-1``."""
        total = 0
        i = min(count, self._n)
        tree = self._tree
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total


class _Lane:
    """Entries in expiry order with their counted requests and tokens."""

    def __init__(self) -> None:
        self.expiry: list[float] = []
        self._requests: list[int] = []
        self._tokens: list[int] = []
        self._handles: list[int] = []
        self._where: dict[int, int] = {}  # handle -> local index
        self.head = 0  # first entry not yet expired
        self._tree_r = _Fenwick([])
        self._tree_t = _Fenwick([])
        self.requests = 0  # counted from the head on
        self.tokens = 0

    def insert(self, handle: int, expires_at: float, tokens: int) -> None:
        index = bisect.bisect_right(self.expiry, expires_at, lo=self.head)
        end = len(self.expiry)
        self.expiry.append(expires_at)
        self._requests.append(0)
        self._tokens.append(0)
        self._handles.append(handle)
        if end >= self._tree_r._n:
            self._rebuild()
        for j in range(end, index, -1):  # nearly always none: appended last
            self._move(j - 1, j)
        self.expiry[index] = expires_at
        self._requests[index] = 1
        self._tokens[index] = tokens
        self._handles[index] = handle
        self._where[handle] = index
        self._tree_r.add(index, 1)
        self._tree_t.add(index, tokens)
        self.requests += 1
        self.tokens += tokens

    def _move(self, src: int, dst: int) -> None:
        r, tk = self._requests[src], self._tokens[src]
        if r or tk:
            self._tree_r.add(src, -r)
            self._tree_t.add(src, -tk)
            self._tree_r.add(dst, r)
            self._tree_t.add(dst, tk)
        self.expiry[dst] = self.expiry[src]
        self._requests[dst] = r
        self._tokens[dst] = tk
        handle = self._handles[src]
        self._handles[dst] = handle
        self._where[handle] = dst

    def local(self, handle: int) -> int | None:
        index = self._where.get(handle)
        if index is None or index < self.head or not self._requests[index]:
            return None
        return index

    def tokens_of(self, index: int) -> int:
        return self._tokens[index]

    def remove(self, index: int) -> None:
        tokens = self._tokens[index]
        self._requests[index] = 0
        self._tokens[index] = 0
        self._tree_r.add(index, -1)
        self._tree_t.add(index, -tokens)
        self.requests -= 1
        self.tokens -= tokens

    def retoken(self, index: int, tokens: int) -> None:
        delta = tokens - self._tokens[index]
        self._tokens[index] = tokens
        self._tree_t.add(index, delta)
        self.tokens += delta

    def expire(self, now: float) -> list[int]:
        """Drop what has expired at ``now``; returns the dropped handles."""
        end = bisect.bisect_right(self.expiry, now, lo=self.head)
        gone = []
        for index in range(self.head, end):
            if self._requests[index]:
                self.remove(index)
            handle = self._handles[index]
            self._where.pop(handle, None)
            gone.append(handle)
        self.head = end
        if self.head > 1024 and self.head * 2 > len(self.expiry):
            self._compact()
        return gone

    def _compact(self) -> None:
        head = self.head
        self.expiry = self.expiry[head:]
        self._requests = self._requests[head:]
        self._tokens = self._tokens[head:]
        self._handles = self._handles[head:]
        self._where = {h: i for i, h in enumerate(self._handles) if h in self._where}
        self.head = 0
        self._rebuild()

    def _rebuild(self) -> None:
        size = max(64, 2 * len(self.expiry))
        self._tree_r = _Fenwick(self._requests + [0] * (size - len(self._requests)))
        self._tree_t = _Fenwick(self._tokens + [0] * (size - len(self._tokens)))

    # -- queries -------------------------------------------------------------

    def end_at(self, moment: float) -> int:
        """Local end of the entries expired at ``moment``."""
        return bisect.bisect_right(self.expiry, moment, lo=self.head)

    def cumulative(self, end: int) -> tuple[int, int]:
        """Requests and tokens of the entries from the head up to ``end``."""
        if end <= self.head:
            return 0, 0
        return (
            self._tree_r.prefix(end) - self._tree_r.prefix(self.head),
            self._tree_t.prefix(end) - self._tree_t.prefix(self.head),
        )

    def entries(self) -> Iterator[tuple[int, float, int]]:
        for index in range(self.head, len(self.expiry)):
            if self._requests[index]:
                yield self._handles[index], self.expiry[index], self._tokens[index]

    def first_counted_from(self, start: int) -> float | None:
        """Expiry of the first counted entry at or after local ``start``."""
        base_r = self._tree_r.prefix(start)
        lo, hi = start, len(self.expiry)
        if self._tree_r.prefix(hi) - base_r <= 0:
            return None
        while lo < hi:  # smallest end with one counted request in [start, end)
            mid = (lo + hi) // 2
            if self._tree_r.prefix(mid + 1) - base_r >= 1:
                hi = mid
            else:
                lo = mid + 1
        return self.expiry[lo]


class RollingWindow:
    """Places in a rolling window: requests and tokens until their expiry.

    ``hold`` counts a granted request until its provisional expiry (grant
    time plus the window); ``place`` moves it to its send time plus the
    window when it leaves; ``add`` counts one with a known expiry (a
    restored snapshot). Handles stay valid for ``remove``/``retoken``.
    ``expire`` drops what has expired; the read-only queries may be asked
    about any ``now`` at or after the last ``expire``.
    """

    def __init__(self) -> None:
        self._granted = _Lane()
        self._sent = _Lane()
        self._lane: dict[int, _Lane] = {}
        self._next_handle = 0

    def __len__(self) -> int:
        return len(self._lane)

    @property
    def requests(self) -> int:
        return self._granted.requests + self._sent.requests

    @property
    def tokens(self) -> int:
        return self._granted.tokens + self._sent.tokens

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    # ---- changes ---------------------------------------------------------------

    def add(self, expires_at: float, tokens: int) -> int:
        handle = self._new_handle()
        self._sent.insert(handle, expires_at, tokens)
        self._lane[handle] = self._sent
        return handle

    def hold(self, tokens: int, expires_at: float) -> int:
        handle = self._new_handle()
        self._granted.insert(handle, expires_at, tokens)
        self._lane[handle] = self._granted
        return handle

    def is_held(self, handle: int) -> bool:
        return self._lane.get(handle) is self._granted and self._granted.local(handle) is not None

    def place(self, handle: int, expires_at: float) -> bool:
        """A held request left: its place now ends at ``expires_at``. False
        when it is not held any more (placed, removed or expired)."""
        if not self.is_held(handle):
            return False
        index = self._granted.local(handle)
        assert index is not None
        tokens = self._granted.tokens_of(index)
        self._granted.remove(index)
        self._sent.insert(handle, expires_at, tokens)
        self._lane[handle] = self._sent
        return True

    def _find(self, handle: int) -> tuple[_Lane, int] | None:
        lane = self._lane.get(handle)
        if lane is None:
            return None
        index = lane.local(handle)
        return None if index is None else (lane, index)

    def remove(self, handle: int) -> bool:
        """Stop counting an entry; False when it had expired or was removed."""
        found = self._find(handle)
        if found is None:
            return False
        found[0].remove(found[1])
        return True

    def retoken(self, handle: int, tokens: int) -> bool:
        """A counted entry used ``tokens`` rather than its estimate."""
        found = self._find(handle)
        if found is None:
            return False
        found[0].retoken(found[1], tokens)
        return True

    def counted(self, handle: int) -> bool:
        return self._find(handle) is not None

    def expiry(self, handle: int) -> float:
        lane = self._lane.get(handle)
        index = None if lane is None else lane._where.get(handle)
        if lane is None or index is None:
            raise KeyError(f"window entry {handle} has expired")
        return lane.expiry[index]

    def expire(self, now: float) -> None:
        for lane in (self._granted, self._sent):
            for handle in lane.expire(now):
                if self._lane.get(handle) is lane:
                    del self._lane[handle]

    # ---- queries (read-only) ----------------------------------------------------

    def live(self, now: float) -> tuple[int, int]:
        """Requests and tokens still in the window at ``now``."""
        requests, tokens = self.requests, self.tokens
        for lane in (self._granted, self._sent):
            gone_r, gone_t = lane.cumulative(lane.end_at(now))
            requests -= gone_r
            tokens -= gone_t
        return requests, tokens

    def _gone_by(self, moment: float) -> tuple[int, int]:
        """Requests and tokens whose places have expired by ``moment``."""
        r = t = 0
        for lane in (self._granted, self._sent):
            gone_r, gone_t = lane.cumulative(lane.end_at(moment))
            r += gone_r
            t += gone_t
        return r, t

    def _first_moment(self, target: int, kind: int) -> float | None:
        """The earliest expiry by which ``target`` requests (kind 0) or tokens
        (kind 1) have gone, counted over both lanes from their heads."""
        best: float | None = None
        for lane in (self._granted, self._sent):
            lo, hi = lane.head, len(lane.expiry)
            if lo >= hi or self._gone_by(lane.expiry[hi - 1])[kind] < target:
                continue
            while lo < hi:
                mid = (lo + hi) // 2
                if self._gone_by(lane.expiry[mid])[kind] >= target:
                    hi = mid
                else:
                    lo = mid + 1
            moment = lane.expiry[lo]
            best = moment if best is None else min(best, moment)
        return best

    def frees_at(self, now: float, rpm: int, tpm: int, est_tokens: int) -> float:
        """When one more request of ``est_tokens`` fits under ``rpm`` requests
        and ``tpm`` tokens (0: no such limit): ``now``, or the expiry that
        brings both sums low enough (``math.inf``: never)."""
        gone_r, gone_t = self._gone_by(now)
        excess_r = self.requests - gone_r + 1 - rpm if rpm else 0
        excess_t = self.tokens - gone_t + est_tokens - tpm if tpm else 0
        if excess_r <= 0 and excess_t <= 0:
            return now
        moment = now
        for excess, base, kind in ((excess_r, gone_r, 0), (excess_t, gone_t, 1)):
            if excess > 0:
                found = self._first_moment(base + excess, kind)
                if found is None:
                    return math.inf
                moment = max(moment, found)
        return moment

    def oldest_expiry(self, now: float) -> float | None:
        """When the oldest entry still counted at ``now`` expires."""
        moments = [
            m
            for lane in (self._granted, self._sent)
            if (m := lane.first_counted_from(lane.end_at(now))) is not None
        ]
        return min(moments, default=None)

    def newest_expiry(self, now: float) -> float | None:
        """When the newest entry still counted at ``now`` expires."""
        moments = []
        for lane in (self._granted, self._sent):
            requests, _ = lane.cumulative(len(lane.expiry))
            gone, _ = lane.cumulative(lane.end_at(now))
            if requests - gone > 0 and lane.expiry:
                moments.append(lane.expiry[-1])
        return max(moments, default=None)

    def entries(self) -> Iterator[tuple[int, float, int]]:
        """``(handle, expires_at, tokens)`` of every counted entry, in expiry order."""
        merged = sorted(
            [*self._granted.entries(), *self._sent.entries()], key=lambda entry: entry[1]
        )
        yield from merged
