"""A rolling window's running sums, answered in O(log n).

The quota policy asks, for every waiting request at the head of a model,
"when does the window have room for one more of ``t`` tokens?" -- the
moment the oldest entries' expiry brings both the request count and the
token sum under their limits. Scanning the entries for that costs as many
steps as the window holds requests (thousands at Gemini's limits), on every
decision. Here the entries sit in expiry order and two Fenwick trees over
their positions hold the requests and tokens still counted, so prefix sums
and "the first entry at which the sum reaches x" take O(log n): an entry
refunded or moved in the middle is one point update.

Entries are kept in expiry order. Most arrive last (a request's place
starts when it is sent); one that arrives a little out of order -- its send
was marked after a later grant's -- is slid into place, which moves only the
few entries behind it. Pure and single-owner, like the rest of ``policies``.
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

    def reach(self, target: int) -> int:
        """The smallest ``count`` with ``prefix(count) >= target`` (values are
        non-negative); ``n + 1`` when even the whole sum falls short."""
        if target <= 0:
            return 0
        position = 0
        remaining = target
        step = 1 << self._n.bit_length()
        tree = self._tree
        while step:
            nxt = position + step
            if nxt <= self._n and tree[nxt] < remaining:
                position = nxt
                remaining -= tree[nxt]
            step >>= 1
        return position + 1 if position < self._n else self._n + 1


class RollingWindow:
    """Places in a rolling window: requests and tokens until their expiry.

    ``add`` returns a handle (the entry's position) for ``remove`` and
    ``retoken``. ``expire`` drops what has expired; the read-only queries may
    be asked about any ``now`` at or after the last ``expire``.
    """

    def __init__(self) -> None:
        self._expiry: list[float] = []
        self._requests: list[int] = []
        self._tokens: list[int] = []
        self._handles: list[int] = []  # local index -> handle
        self._where: dict[int, int] = {}  # handle -> local index (while not expired)
        self._next_handle = 0
        self._head = 0  # local index of the first entry not yet expired
        self._tree_requests = _Fenwick([])
        self._tree_tokens = _Fenwick([])
        self.requests = 0  # counted entries from the head on
        self.tokens = 0

    def __len__(self) -> int:
        return len(self._expiry) - self._head

    # ---- changes ---------------------------------------------------------------

    def add(self, expires_at: float, tokens: int) -> int:
        """Count one request of ``tokens`` until ``expires_at``."""
        handle = self._next_handle
        self._next_handle += 1
        index = bisect.bisect_right(self._expiry, expires_at, lo=self._head)
        end = len(self._expiry)
        self._expiry.append(expires_at)
        self._requests.append(0)
        self._tokens.append(0)
        self._handles.append(handle)
        if end >= self._tree_requests._n:
            self._rebuild()
        # Slide the entries behind the new one back by one place.
        for j in range(end, index, -1):
            self._move(j - 1, j)
        self._expiry[index] = expires_at
        self._requests[index] = 1
        self._tokens[index] = tokens
        self._handles[index] = handle
        self._where[handle] = index
        self._tree_requests.add(index, 1)
        self._tree_tokens.add(index, tokens)
        self.requests += 1
        self.tokens += tokens
        return handle

    def _move(self, src: int, dst: int) -> None:
        r, tk = self._requests[src], self._tokens[src]
        if r or tk:
            self._tree_requests.add(src, -r)
            self._tree_tokens.add(src, -tk)
            self._tree_requests.add(dst, r)
            self._tree_tokens.add(dst, tk)
        self._expiry[dst] = self._expiry[src]
        self._requests[dst] = r
        self._tokens[dst] = tk
        handle = self._handles[src]
        self._handles[dst] = handle
        self._where[handle] = dst

    def _local(self, handle: int) -> int | None:
        local = self._where.get(handle)
        if local is None or local < self._head or not self._requests[local]:
            return None
        return local

    def remove(self, handle: int) -> bool:
        """Stop counting an entry; False when it had expired or was removed."""
        local = self._local(handle)
        if local is None:
            return False
        tokens = self._tokens[local]
        self._requests[local] = 0
        self._tokens[local] = 0
        self._tree_requests.add(local, -1)
        self._tree_tokens.add(local, -tokens)
        self.requests -= 1
        self.tokens -= tokens
        return True

    def retoken(self, handle: int, tokens: int) -> bool:
        """A counted entry used ``tokens`` rather than its estimate."""
        local = self._local(handle)
        if local is None:
            return False
        delta = tokens - self._tokens[local]
        self._tokens[local] = tokens
        self._tree_tokens.add(local, delta)
        self.tokens += delta
        return True

    def counted(self, handle: int) -> bool:
        return self._local(handle) is not None

    def expiry(self, handle: int) -> float:
        local = self._where.get(handle)
        if local is None:
            raise KeyError(f"window entry {handle} has expired")
        return self._expiry[local]

    def expire(self, now: float) -> None:
        """Drop every entry whose place has expired at ``now``."""
        end = bisect.bisect_right(self._expiry, now, lo=self._head)
        if end == self._head:
            return
        gone_r = self._tree_requests.prefix(end) - self._tree_requests.prefix(self._head)
        gone_t = self._tree_tokens.prefix(end) - self._tree_tokens.prefix(self._head)
        self.requests -= gone_r
        self.tokens -= gone_t
        for local in range(self._head, end):
            if self._requests[local]:
                self._tree_requests.add(local, -1)
                self._tree_tokens.add(local, -self._tokens[local])
                self._requests[local] = 0
                self._tokens[local] = 0
            self._where.pop(self._handles[local], None)
        self._head = end
        if self._head > 1024 and self._head * 2 > len(self._expiry):
            self._compact()

    def _compact(self) -> None:
        head = self._head
        self._expiry = self._expiry[head:]
        self._requests = self._requests[head:]
        self._tokens = self._tokens[head:]
        self._handles = self._handles[head:]
        self._where = {handle: i for i, handle in enumerate(self._handles) if handle in self._where}
        self._head = 0
        self._rebuild()

    def _rebuild(self) -> None:
        size = max(64, 2 * len(self._expiry))
        self._tree_requests = _Fenwick(self._requests + [0] * (size - len(self._requests)))
        self._tree_tokens = _Fenwick(self._tokens + [0] * (size - len(self._tokens)))

    # ---- queries (read-only) ----------------------------------------------------

    def _gone(self, now: float) -> tuple[int, int, int]:
        """Local end of the entries expired at ``now``, and their sums."""
        end = bisect.bisect_right(self._expiry, now, lo=self._head)
        if end == self._head:
            return end, 0, 0
        head = self._head
        return (
            end,
            self._tree_requests.prefix(end) - self._tree_requests.prefix(head),
            self._tree_tokens.prefix(end) - self._tree_tokens.prefix(head),
        )

    def live(self, now: float) -> tuple[int, int]:
        """Requests and tokens still in the window at ``now``."""
        _, gone_r, gone_t = self._gone(now)
        return self.requests - gone_r, self.tokens - gone_t

    def frees_at(self, now: float, rpm: int, tpm: int, est_tokens: int) -> float:
        """When one more request of ``est_tokens`` fits under ``rpm`` requests
        and ``tpm`` tokens (0: no such limit): ``now``, or the expiry that
        brings both sums low enough (``math.inf``: never)."""
        end, gone_r, gone_t = self._gone(now)
        excess_r = self.requests - gone_r + 1 - rpm if rpm else 0
        excess_t = self.tokens - gone_t + est_tokens - tpm if tpm else 0
        if excess_r <= 0 and excess_t <= 0:
            return now
        need = 0
        if excess_r > 0:
            need = self._tree_requests.reach(self._tree_requests.prefix(end) + excess_r)
        if excess_t > 0:
            need = max(need, self._tree_tokens.reach(self._tree_tokens.prefix(end) + excess_t))
        if need > len(self._expiry):
            return math.inf
        return self._expiry[need - 1]

    def oldest_expiry(self, now: float) -> float | None:
        """When the oldest entry still counted at ``now`` expires."""
        end, _, _ = self._gone(now)
        need = self._tree_requests.reach(self._tree_requests.prefix(end) + 1)
        if need > len(self._expiry):
            return None
        return self._expiry[need - 1]

    def newest_expiry(self, now: float) -> float | None:
        """When the newest entry still in the window expires (entries are in
        expiry order, so it is the last one; refunded ones aside)."""
        if self.live(now)[0] <= 0 or not self._expiry:
            return None
        return self._expiry[-1]

    def entries(self) -> Iterator[tuple[int, float, int]]:
        """``(handle, expires_at, tokens)`` of every counted entry, oldest first."""
        for local in range(self._head, len(self._expiry)):
            if self._requests[local]:
                yield self._handles[local], self._expiry[local], self._tokens[local]
