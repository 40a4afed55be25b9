"""``tierbatch status``: what a database and its quota snapshot say, read-only.

With several daemons on the database it also shows every live daemon (its
role in the shared quota, its backlog and its share of the grants) and
reads the quota state the owner saved in the database when that is newer
than the snapshot file. Daemons started with ``--ray`` take their quota
from a registry actor on Ray instead of an elected owner; they heartbeat
the same table, so they are shown the same way, with the registry actor
that serves them -- and a queue whose live daemons take their quota from
more than one registry (two Ray projects, or Ray and an elected owner) is
called out: they do not share one quota.

It reads the database read-only -- an SQLite file with a ``mode=ro``
connection (in WAL mode readers never block the daemon writing next to
them), a PostgreSQL database in one read-only snapshot -- and never takes a
write lock, creates tables or moves a corrupt snapshot aside: it only
looks. The quota state is read from the snapshot file the daemon saves and
interpreted with the quota policy itself, so "used today" means exactly what
the daemon will count (a snapshot from yesterday shows 0 today), and the
limits, burst and limiter shape shown are those the daemon learnt of the
provider and will start from ("configured 240, learnt 120").

Longer than the house's ~450 lines on purpose: the read, the text and the
JSON of one report side by side, so a field added to one is added to all.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from tierbatch.actors.runtime import make_budget
from tierbatch.adapters.app.budget_view import budget_line
from tierbatch.adapters.app.learnt_limits import LearntLimits
from tierbatch.adapters.storage.open_store import display_name, read_report
from tierbatch.adapters.storage.quota_lease import (
    ROLE_RAY,
    DaemonInfo,
    QuotaOwner,
    RayRegistryAddress,
)
from tierbatch.adapters.storage.snapshot_file import decode
from tierbatch.adapters.storage.store import (
    BatchReport,
    GroundingCount,
    QueueReport,
    ResultCount,
)
from tierbatch.adapters.storage.tiers_file import TiersFileError, read_tiers
from tierbatch.policies.budget import BudgetState
from tierbatch.policies.config import Config, ModelSpec
from tierbatch.policies.errors import SnapshotError, StorageError
from tierbatch.policies.quota import QuotaPolicy


class StatusError(StorageError):
    """The database cannot be read (missing, not a tierbatch database, ...)."""


@dataclass(frozen=True, slots=True)
class ModelQuota:
    model: str
    requests_today: int
    rpd: int
    requests_in_window: int
    rpm: int
    cooldown_s: float
    cooldown_reason: str | None
    exhausted_s: float
    unavailable: str | None
    # What the daemon learnt of the provider (``learnt_limits``): the
    # effective limits, the burst it may send at once, the limiter's shape.
    configured_rpm: int = 0
    learnt_rpm: int = 0
    configured_tpm: int = 0
    learnt_tpm: int = 0
    burst: float = 0.0
    limiter: str = "unknown"

    @property
    def learnt(self) -> LearntLimits:
        return LearntLimits(
            self.model,
            self.configured_rpm,
            self.learnt_rpm,
            self.configured_tpm,
            self.learnt_tpm,
            self.burst,
            self.limiter,
        )


@dataclass(frozen=True, slots=True)
class TierRule:
    """A tier's threshold: fixed (``share`` None) or the one its share
    implies now, as the daemon last saved it (None: not known yet)."""

    tier: str
    share: float | None
    min_priority: float | None


@dataclass(frozen=True, slots=True)
class TierRules:
    tiers: tuple[TierRule, ...]
    path: str
    # How many recent priorities the share window held, when saved.
    window: int | None = None
    saved_age_s: float | None = None
    as_of: float | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class DaemonView:
    """A live daemon: ``share`` is its part of the grants lately (of the
    grant rates; of all grants when nobody was granted anything lately)."""

    owner: str
    host: str
    pid: int
    role: str
    address: str | None
    heartbeat_s_ago: float
    backlog: int
    waiting: int
    grants: int
    grants_per_s: float
    share: float


@dataclass(frozen=True, slots=True)
class RayRegistryView:
    """A registry actor on Ray that serves live daemons of this queue."""

    address: str  # ray://CLUSTER/NAMESPACE/ACTOR, as the daemons recorded it
    cluster: str
    namespace: str
    actor: str
    daemons: int


@dataclass(frozen=True, slots=True)
class QuotaOwnerView:
    owner: str
    address: str
    epoch: int
    live: bool
    lease_s_left: float


@dataclass(frozen=True, slots=True)
class Status:
    db: str
    states: dict[str, int]
    expired_leases: int
    results: tuple[ResultCount, ...]
    rejects: int
    rejects_by_source: dict[str, int]
    # Results refused over the database's life: from a lease owner that had
    # lost its lease (dropped), and second results for an article (ignored).
    stale_results: int
    duplicate_results: int
    snapshot: str
    snapshot_age_s: float | None
    snapshot_problem: str | None
    quota: tuple[ModelQuota, ...]
    # The grounding check's outcomes per tier, model and pack size.
    grounding: tuple[GroundingCount, ...] = ()
    # The Batch API's jobs: in flight, over, and the money they saved.
    batch: BatchReport = field(default_factory=BatchReport)
    # The daily budget as the snapshot has it (None: no [budget] configured).
    budget: BudgetState | None = None
    now: float = 0.0
    # Each tier's min_priority (a share tier's as the daemon last saved it).
    tier_rules: TierRules | None = None
    # The shared quota: its owner (None: never shared) and the live daemons.
    quota_owner: QuotaOwnerView | None = None
    daemons: tuple[DaemonView, ...] = ()
    # The registry actors on Ray that serve live daemons (``daemon --ray``).
    ray_registries: tuple[RayRegistryView, ...] = ()

    @property
    def quota_sources(self) -> int:
        """How many registries the live daemons take their quota from (a
        live elected owner is one): more than one, and they do not share."""
        owner = self.quota_owner
        elected = any(d.role != ROLE_RAY for d in self.daemons) or (
            owner is not None and owner.live
        )
        return len(self.ray_registries) + (1 if elected else 0)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["quota_sources"] = self.quota_sources
        return data


def read_status(
    db_path: str | os.PathLike[str],
    snapshot_path: str | os.PathLike[str],
    config: Config,
    *,
    now: float | None = None,
    tiers_path: str | os.PathLike[str] | None = None,
) -> Status:
    now = time.time() if now is None else now
    try:
        report = read_report(db_path, now)
    except StorageError as exc:
        raise StatusError(str(exc)) from exc
    snapshot, data, age, problem = _quota_source(report, Path(snapshot_path), now)
    quota: tuple[ModelQuota, ...] = ()
    if data is not None:
        quota, problem = _read_quota(data, config, now)
    budget = _read_budget(data, config, now)
    daemons = _daemon_views(report.daemons, now)
    return Status(
        db=display_name(db_path),
        states=report.states,
        expired_leases=report.expired_leases,
        results=report.results,
        rejects=sum(report.rejects_by_source.values()),
        rejects_by_source=report.rejects_by_source,
        stale_results=report.refused["stale_results"],
        duplicate_results=report.refused["duplicate_results"],
        snapshot=snapshot,
        snapshot_age_s=age,
        snapshot_problem=problem,
        quota=quota,
        grounding=report.grounding,
        batch=report.batch,
        budget=budget,
        now=now,
        tier_rules=read_tier_rules(Path(tiers_path), config, now) if tiers_path else None,
        quota_owner=_owner_view(report.quota_owner),
        daemons=daemons,
        ray_registries=_ray_registries(daemons),
    )


def _read_budget(data: bytes | None, config: Config, now: float) -> BudgetState | None:
    """The day's budget as the daemon will count it: the quota state's spend
    (calls in flight at its estimate), 0 when it is from an earlier day."""
    if not config.budget.enabled:
        return None
    state: Any = None
    if data is not None:
        with contextlib.suppress(SnapshotError):
            state = decode(data)
    budget = make_budget(config, state if isinstance(state, dict) else None)
    return None if budget is None else budget.state(now)


def read_tier_rules(path: Path, config: Config, now: float) -> TierRules:
    """The config's ladder, with the thresholds the daemon saved for its
    share tiers (fixed thresholds come from the config itself)."""
    last = len(config.tiers) - 1
    fixed = tuple(
        TierRule(
            t.name, t.share, None if t.share is not None else (0.0 if i == last else t.min_priority)
        )
        for i, t in enumerate(config.tiers)
    )
    try:
        saved = read_tiers(path)
        age = max(0.0, now - path.stat().st_mtime) if saved is not None else None
    except (OSError, TiersFileError) as exc:
        return TierRules(fixed, str(path), problem=f"cannot read: {exc}")
    if saved is None:
        return TierRules(fixed, str(path))
    by_name = {t.tier: t for t in saved.tiers}
    rules = tuple(
        TierRule(r.tier, r.share, by_name[r.tier].min_priority)
        if r.share is not None and r.tier in by_name
        else r
        for r in fixed
    )
    return TierRules(rules, str(path), saved.window, age, saved.as_of)


def _quota_source(
    report: QueueReport, path: Path, now: float
) -> tuple[str, bytes | None, float | None, str | None]:
    """Where the quota state is read from -- the snapshot file, or the
    database's row when it is newer -- its bytes, age and a problem."""
    row = report.quota_state
    data: bytes | None = None
    age: float | None = None
    problem: str | None = None
    try:
        data = path.read_bytes()
        age = max(0.0, now - path.stat().st_mtime)
    except FileNotFoundError:
        pass
    except OSError as exc:
        problem = f"cannot read: {exc}"
    if row is not None and (data is None or now - row.saved_at <= (age or 0.0)):
        return f"database (saved by {row.owner})", row.state, max(0.0, now - row.saved_at), None
    return str(path), data, age, problem


def _owner_view(owner: QuotaOwner | None) -> QuotaOwnerView | None:
    if owner is None:
        return None
    left = max(0.0, owner.lease_expires - owner.read_at)
    return QuotaOwnerView(owner.owner, owner.address, owner.epoch, owner.live, left)


def _daemon_views(rows: tuple[DaemonInfo, ...], now: float) -> tuple[DaemonView, ...]:
    live = [d for d in rows if d.expires_at >= now]
    rates = sum(d.grant_rate for d in live)
    totals = sum(d.grants for d in live)
    return tuple(
        DaemonView(
            owner=d.owner,
            host=d.host,
            pid=d.pid,
            role=d.role,
            address=d.address,
            heartbeat_s_ago=max(0.0, now - d.heartbeat_at),
            backlog=d.backlog,
            waiting=d.waiting,
            grants=d.grants,
            grants_per_s=d.grant_rate,
            share=(d.grant_rate / rates) if rates else (d.grants / totals if totals else 0.0),
        )
        for d in live
    )


def _ray_registries(daemons: tuple[DaemonView, ...]) -> tuple[RayRegistryView, ...]:
    """The registry actors the live ``--ray`` daemons named, in order of
    their first daemon."""
    counts: dict[str, int] = {}
    for d in daemons:
        if d.role == ROLE_RAY and d.address:
            counts[d.address] = counts.get(d.address, 0) + 1
    views = []
    for address, count in counts.items():
        parsed = RayRegistryAddress.parse(address)
        if parsed is None:
            views.append(RayRegistryView(address, "?", "?", address, count))
        else:
            views.append(
                RayRegistryView(address, parsed.cluster, parsed.namespace, parsed.actor, count)
            )
    return tuple(views)


def _read_quota(
    data: bytes, config: Config, now: float
) -> tuple[tuple[ModelQuota, ...], str | None]:
    try:
        state = decode(data)
        models = dict(config.models)
        for name in state.get("models", {}) if isinstance(state.get("models"), dict) else ():
            if isinstance(name, str) and name not in models:
                models[name] = ModelSpec(name=name, rpm=0, tpm=0, rpd=0)
        policy = QuotaPolicy.restore(models, config.quota, state)
    except SnapshotError as exc:
        return (), f"unusable ({exc}); the daemon will set it aside and start fresh"
    quota = []
    for s in policy.status(now):
        spec = models[s.model]
        quota.append(
            ModelQuota(
                model=s.model,
                requests_today=s.requests_today,
                rpd=spec.rpd,
                requests_in_window=s.requests_in_window,
                rpm=spec.rpm,
                cooldown_s=max(0.0, (s.cooldown_until or now) - now),
                cooldown_reason=s.cooldown_reason,
                exhausted_s=max(0.0, (s.exhausted_until or now) - now),
                unavailable=s.unavailable,
                configured_rpm=s.configured_rpm,
                learnt_rpm=s.learnt_rpm,
                configured_tpm=s.configured_tpm,
                learnt_tpm=s.learnt_tpm,
                burst=s.burst,
                limiter=s.limiter,
            )
        )
    return tuple(quota), None


def render_status(status: Status, file: TextIO) -> None:
    console = Console(
        file=file,
        width=None if file.isatty() else 160,
        no_color=not file.isatty(),
        highlight=False,
    )
    s = status.states
    console.print(f"database: {status.db}")
    expired = f" ({status.expired_leases} expired)" if status.expired_leases else ""
    console.print(
        f"articles: {s['queued']} queued, {s['leased']} leased{expired}, "
        f"{s['done']} done, {s['failed']} failed; {status.rejects} input line(s) rejected"
    )
    if status.stale_results or status.duplicate_results:
        console.print(
            f"results refused: {status.stale_results} from a stale lease owner (dropped), "
            f"{status.duplicate_results} duplicate(s) (ignored)"
        )
    _render_daemons(status, console)
    if status.results:
        table = Table(title="results", box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("status", "tier", "model", "articles", "tokens in", "tokens out", "cost $"):
            table.add_column(
                name, justify="right" if name not in ("status", "tier", "model") else "left"
            )
        for r in status.results:
            table.add_row(
                r.status,
                r.tier or "-",
                r.model or "-",
                str(r.count),
                f"{r.input_tokens:,}",
                f"{r.output_tokens:,}",
                f"{r.cost_usd:.4f}",
            )
        console.print(table)
    if status.grounding:
        console.print(grounding_table(status.grounding))
    line = batch_line(status.batch)
    if line:
        console.print(line)
    if status.budget is not None:
        console.print(budget_line(status.budget, status.now))
    if status.tier_rules is not None:
        render_tier_rules(status.tier_rules, console)
    if status.snapshot_problem:
        console.print(f"quota snapshot {status.snapshot}: {status.snapshot_problem}")
    elif status.snapshot_age_s is None:
        console.print(f"quota snapshot {status.snapshot}: none yet")
    else:
        console.print(
            f"quota snapshot {status.snapshot} (saved {status.snapshot_age_s:.0f} s ago):"
        )
        table = Table(box=box.SIMPLE_HEAD)
        columns = ("model", "today / rpd", "window / rpm", "tpm", "burst", "cooldown", "state")
        for name in columns:
            table.add_column(name, justify="left" if name in ("model", "state") else "right")
        for q in status.quota:
            learnt = q.learnt
            table.add_row(
                q.model,
                f"{q.requests_today} / {q.rpd or '∞'}",
                f"{q.requests_in_window} / {learnt.rpm_text}",
                learnt.tpm_text,
                learnt.burst_text,
                f"{q.cooldown_s:.0f} s" if q.cooldown_s else "-",
                _state(q),
            )
        console.print(table)


def batch_line(batch: BatchReport) -> str | None:
    """The Batch API's jobs in one line (None when there were none)."""
    if not (batch.in_flight or batch.settled or batch.returned):
        return None
    return (
        f"batch jobs: {batch.in_flight} in flight ({batch.articles_in_flight} articles), "
        f"{batch.settled} settled, {batch.returned} returned; cost ${batch.cost_usd:.4f}, "
        f"saved ${batch.saved_usd:.4f} against interactive prices"
    )


def _render_daemons(status: Status, console: Console) -> None:
    owner = status.quota_owner
    if owner is None and not status.daemons:
        return
    if owner is not None and (owner.live or not status.ray_registries):
        lease = f"lease {owner.lease_s_left:.0f} s left" if owner.live else "lease expired"
        console.print(
            f"shared quota: owned by {owner.owner} at {owner.address} "
            f"(epoch {owner.epoch}, {lease})"
        )
    for registry in status.ray_registries:
        console.print(
            f"shared quota: on Ray, registry actor {registry.actor} "
            f"(namespace {registry.namespace}) of the cluster at {registry.cluster}, "
            f"serving {registry.daemons} daemon(s)"
        )
    if status.quota_sources > 1:
        console.print(
            f"warning: the live daemons take their quota from {status.quota_sources} "
            "registries, so they do not share one quota (start them all with the same "
            "--ray and --ray-project, or all without --ray)"
        )
    if not status.daemons:
        console.print("daemons: none live")
        return
    table = Table(title="daemons", box=box.SIMPLE_HEAD, title_justify="left")
    for name in (
        "daemon",
        "role",
        "heartbeat",
        "backlog",
        "waiting",
        "grants",
        "grants/s",
        "share",
    ):
        table.add_column(name, justify="left" if name in ("daemon", "role") else "right")
    for d in status.daemons:
        table.add_row(
            f"{d.host}:{d.pid}",
            d.role + (f" ({_where(d)})" if d.address else ""),
            f"{d.heartbeat_s_ago:.0f} s ago",
            str(d.backlog),
            str(d.waiting),
            str(d.grants),
            f"{d.grants_per_s:.1f}",
            f"{100 * d.share:.0f}%",
        )
    console.print(table)


def _where(d: DaemonView) -> str:
    """An owner's HOST:PORT; a Ray daemon's registry actor by name."""
    if d.role == ROLE_RAY and d.address:
        parsed = RayRegistryAddress.parse(d.address)
        return parsed.actor if parsed is not None else d.address
    return d.address or ""


def render_tier_rules(rules: TierRules, console: Console) -> None:
    """``tiers:`` and a line per tier: its share and the threshold it implies."""
    shares = any(r.share is not None for r in rules.tiers)
    if rules.problem:
        head = f"tiers ({rules.path} {rules.problem}):"
    elif shares and rules.saved_age_s is not None:
        head = (
            f"tiers (thresholds the shares imply over {rules.window} recent priorities, "
            f"saved {rules.saved_age_s:.0f} s ago):"
        )
    elif shares:
        head = "tiers (no run has saved the thresholds its shares imply yet):"
    else:
        head = "tiers:"
    console.print(head)
    last = len(rules.tiers) - 1
    for i, r in enumerate(rules.tiers):
        if r.share is not None:
            at = "?" if r.min_priority is None else f"{r.min_priority:.3f}"
            console.print(f"  {r.tier}: share {r.share:.0%}, min_priority >= {at}")
        elif i == last:
            console.print(f"  {r.tier}: the rest")
        else:
            console.print(f"  {r.tier}: min_priority >= {r.min_priority:g}")


def grounding_table(rows: tuple[GroundingCount, ...]) -> Table:
    """Per tier, model and pack size: the share of entities found only in
    another article of the request, and in none."""
    table = Table(
        title="grounding: entities checked against their articles",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for name in ("tier", "model", "pack size", "articles", "entities"):
        table.add_column(name, justify="left" if name in ("tier", "model") else "right")
    table.add_column("cross-article", justify="right")
    table.add_column("ungrounded", justify="right")
    for g in rows:
        table.add_row(
            g.tier or "-",
            g.model or "-",
            str(g.pack_size or "?"),
            str(g.articles),
            str(g.entities),
            f"{g.cross_article_share:.1%}",
            f"{g.ungrounded_share:.1%}",
        )
    return table


def _state(q: ModelQuota) -> str:
    if q.unavailable:
        return f"unavailable: {q.unavailable}"
    if q.exhausted_s:
        return f"out of daily quota for {q.exhausted_s / 3600:.1f} h"
    if q.cooldown_s:
        return f"cooling down ({q.cooldown_reason or 'cooldown'})"
    return "ok"


__all__ = [
    "DaemonView",
    "ModelQuota",
    "QuotaOwnerView",
    "RayRegistryView",
    "Status",
    "StatusError",
    "TierRule",
    "TierRules",
    "read_status",
    "read_tier_rules",
    "render_status",
]
