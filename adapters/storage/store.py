"""The store contract: what the daemon, the ``ResultsSink``, ingest and
``tierbatch status`` need of a queue database, and the types and errors
both implementations share.

Two stores implement ``Store`` with the same schema and the same
behaviour: ``SqliteStore`` (the embedded default, one file) and
``PostgresStore`` (a server that many machines share). The contract, which
``tests/test_store_contract.py`` runs against both:

* ``enqueue`` adds articles as 'queued'; an id already there (in any
  state) is a duplicate and left alone.
* ``lease`` takes up to ``limit`` rows for ``lease_s`` seconds, atomically
  across processes and machines: expired leases of other owners first
  (oldest deadline first; an owner never takes over its own leases: it
  renews them while it runs, so one that looks expired only means the wall
  clock stepped), then queued rows by priority (highest first, rows without one
  last), then age. A row that cannot be worked on is never leased; it gets
  a ``failed`` result in the same transaction (``bad_request`` for a
  payload that is not a valid article, ``poison`` for a row leased
  ``poison_after`` times without a result). ``attempts`` counts strikes:
  +1 for every lease taken, -1 for every lease handed back by ``release``.
* ``write_results`` stores a result only for the row's current lease
  owner (or an article with no row); a stale owner's result is dropped and
  counted, a second result for an article is ignored and counted; a result
  is written once and never overwritten. The counters live in ``meta``.
* Timestamps are Unix epoch seconds (floats) from the store's clock.
* The shared quota (``quota_lease``): ``claim_quota`` takes the quota's
  owner row only when its lease expired (the epoch goes up); renewing,
  releasing and saving the quota snapshot only by the owner of that epoch,
  the save checked inside its write transaction; every daemon heartbeats
  its ``daemons`` row.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tierbatch.adapters.storage.jsonl_input import Rejected
from tierbatch.adapters.storage.quota_lease import DaemonInfo, QuotaOwner, SavedQuota
from tierbatch.policies.articles import Article
from tierbatch.policies.errors import StorageError
from tierbatch.policies.results import TerminalResult


class IncompatibleSchemaError(StorageError):
    """The database was created by an incompatible version of tierbatch."""


@dataclass(frozen=True, slots=True)
class EnqueueReport:
    inserted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class ResultCount:
    """Results grouped by status, tier and model, with their token and cost sums."""

    status: str
    tier: str
    model: str
    count: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class GroundingCount:
    """Done results of one tier, model and request pack size, and how many
    of their entities the grounding check found grounded, only in another
    article of the request (cross-article), or nowhere (ungrounded)."""

    tier: str
    model: str
    pack_size: int
    articles: int
    grounded: int
    cross_article: int
    ungrounded: int

    @property
    def entities(self) -> int:
        return self.grounded + self.cross_article + self.ungrounded

    @property
    def cross_article_share(self) -> float:
        return self.cross_article / self.entities if self.entities else 0.0

    @property
    def ungrounded_share(self) -> float:
        return self.ungrounded / self.entities if self.entities else 0.0


@dataclass(frozen=True, slots=True)
class StoredReject:
    source: str
    line_no: int
    reason: str
    raw_prefix: str
    at: float


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What ``status`` shows of the jobs: in flight (jobs, articles), and
    over (settled, returned), with the money the settled ones saved."""

    in_flight: int = 0
    articles_in_flight: int = 0
    settled: int = 0
    returned: int = 0
    cost_usd: float = 0.0
    interactive_cost_usd: float = 0.0

    @property
    def saved_usd(self) -> float:
        return self.interactive_cost_usd - self.cost_usd


@dataclass(frozen=True, slots=True)
class QueueReport:
    """What ``tierbatch status`` reads from a database, in one look."""

    states: dict[str, int]
    expired_leases: int
    results: tuple[ResultCount, ...]
    rejects_by_source: dict[str, int]
    # Results refused over the database's life (see ``refused_counts``).
    refused: dict[str, int]
    # The grounding outcomes per tier, model and pack size (schema >= 2).
    grounding: tuple[GroundingCount, ...] = ()
    # The Batch API's jobs (schema >= 3).
    batch: BatchReport = field(default_factory=BatchReport)
    # The shared quota: its owner, every daemon's row, the owner's last snapshot.
    quota_owner: QuotaOwner | None = None
    daemons: tuple[DaemonInfo, ...] = ()
    quota_state: SavedQuota | None = None


def default_owner() -> str:
    """A lease owner id unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_process_gone(owner: str) -> bool:
    """Whether the process a lease owner id names is known to be gone: it
    ran on this host and no process has its pid now. Anything else -- another
    host, a pid in use (perhaps reused), an id of another shape -- is not
    known, and its lease must run out instead."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, as another user's
        return False
    return False


class Store(Protocol):
    """A queue database: articles, results, rejects and counters.

    ``path`` names the database in messages and logs (a file path, or a
    URL without its password); ``owner`` is this process's lease owner id.
    Every method raises only ``StorageError`` for a database problem, and
    may be called from several threads.
    """

    @property
    def path(self) -> str: ...

    @property
    def owner(self) -> str: ...

    def enqueue(
        self,
        articles: Iterable[Article],
        *,
        priority_of: Callable[[Article], float | None] | None = None,
    ) -> EnqueueReport: ...

    def add_rejects(self, source: str, rejects: Iterable[Rejected]) -> int: ...

    def lease(
        self, limit: int, lease_s: float, *, poison_after: int | None = None
    ) -> list[Article]: ...

    def renew(self, lease_s: float) -> int: ...

    def release(self, ids: Iterable[str] | None = None) -> int: ...

    def write_results(self, results: Sequence[TerminalResult]) -> int: ...

    @property
    def duplicate_results(self) -> int: ...

    @property
    def stale_results(self) -> int: ...

    def refused_results(self) -> dict[str, int]: ...

    def results(self, ids: Iterable[str] | None = None) -> Iterator[TerminalResult]: ...

    def cluster_backlog(self, limit: int) -> list[tuple[str, str, float | None]]: ...

    def counts(self) -> dict[str, int]: ...

    def pending(self) -> int: ...

    def result_counts(self) -> list[ResultCount]: ...

    def task_versions(self) -> dict[str, int]: ...

    def rejects(self, source: str | None = None) -> list[StoredReject]: ...

    # The shared quota (``quota_lease``).

    def claim_quota(self, address: str, lease_s: float) -> QuotaOwner: ...

    def take_over_quota(self, dead: QuotaOwner, address: str, lease_s: float) -> QuotaOwner: ...

    def renew_quota(self, epoch: int, lease_s: float) -> bool: ...

    def release_quota(self, epoch: int) -> bool: ...

    def quota_owner(self) -> QuotaOwner | None: ...

    def save_quota_state(self, epoch: int, state: bytes, saved_at: float) -> bool: ...

    def load_quota_state(self) -> SavedQuota | None: ...

    def heartbeat(self, info: DaemonInfo, lease_s: float) -> None: ...

    def forget_daemon(self) -> None: ...

    def daemons(self) -> list[DaemonInfo]: ...

    def close(self) -> None: ...


def refused_counts(rows: Iterable[Sequence[Any]]) -> dict[str, int]:
    """``{"stale_results": n, "duplicate_results": m}`` from ``meta`` rows (0 when absent)."""
    counts = {"stale_results": 0, "duplicate_results": 0}
    for key, value in rows:
        try:
            counts[key] = int(value)
        except (TypeError, ValueError):
            continue
    return counts
