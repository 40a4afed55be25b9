"""What one ``tierbatch run`` (or daemon session) did: counted, then printed.

Two sources, because neither alone tells the whole story:

* ``ResultTally`` counts the terminal results this process wrote -- articles
  per tier and model, fallbacks, failures by reason, the tokens and cost
  attributed to each article, and the grounding check's outcomes per tier,
  model and pack size;
* ``ModelUsage`` is the difference of the registry's per-model counters
  between the start and the end of the run -- requests, 429s, cooldown time
  and the tokens every request consumed, including requests whose answers
  were unusable (the counters are restored from the quota snapshot, hence the
  difference).

``render_summary`` lays them out as two tables (per tier, per model) with the
provider named above them, so synthetic results are never mistaken for
Gemini's, then says what was learnt of the provider (limits below the
configured ones, the burst, the limiter's shape) and, when the caller
measured it, how close to the quotas' bound the run came (``BoundReport``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tierbatch.adapters.app.learnt_limits import LearntLimits
from tierbatch.policies.config import Config, UnknownModelError
from tierbatch.policies.costs import usage_cost
from tierbatch.policies.outcomes import Usage
from tierbatch.policies.pack_quality import GroundingRow, GroundingTally
from tierbatch.policies.quota import ModelStatus
from tierbatch.policies.results import Done, TerminalResult


@dataclass(slots=True)
class TierModelCount:
    """Done articles of one (tier, model) and what they were attributed."""

    articles: int = 0
    fallbacks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class TallySnapshot:
    """A consistent copy of a ``ResultTally``."""

    done: Mapping[tuple[str, str], TierModelCount]
    failed_by_tier: Mapping[str, int]
    failed_by_reason: Mapping[str, int]
    grounding: tuple[GroundingRow, ...] = ()

    @property
    def done_total(self) -> int:
        return sum(row.articles for row in self.done.values())

    @property
    def failed_total(self) -> int:
        return sum(self.failed_by_tier.values())


class ResultTally:
    """Counts terminal results; written from the sink's thread, read from any."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[tuple[str, str], TierModelCount] = {}
        self._failed_by_tier: Counter[str] = Counter()
        self._failed_by_reason: Counter[str] = Counter()
        self._grounding = GroundingTally()

    def add(self, results: Iterable[TerminalResult]) -> None:
        results = list(results)
        with self._lock:
            self._grounding.add(results)
            for result in results:
                if isinstance(result, Done):
                    row = self._done.setdefault((result.tier, result.model), TierModelCount())
                    row.articles += 1
                    row.fallbacks += result.fallback
                    row.input_tokens += result.input_tokens
                    row.output_tokens += result.output_tokens
                    row.cost_usd += result.cost_usd
                else:
                    self._failed_by_tier[result.tier or "-"] += 1
                    self._failed_by_reason[str(result.reason)] += 1

    @property
    def terminal(self) -> int:
        with self._lock:
            return sum(r.articles for r in self._done.values()) + sum(self._failed_by_tier.values())

    def snapshot(self) -> TallySnapshot:
        with self._lock:
            return TallySnapshot(
                done={
                    k: TierModelCount(
                        v.articles, v.fallbacks, v.input_tokens, v.output_tokens, v.cost_usd
                    )
                    for k, v in self._done.items()
                },
                failed_by_tier=dict(self._failed_by_tier),
                failed_by_reason=dict(self._failed_by_reason),
                grounding=self._grounding.rows(),
            )


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """What one model's requests did during the run (counter differences),
    and what was learnt of the provider by its end (``learnt``)."""

    model: str
    requests: int
    rate_limited: int
    cooldown_s: float
    input_tokens: int
    output_tokens: int
    learnt: LearntLimits | None = None
    thinking_tokens: int = 0
    cached_tokens: int = 0


def usage_between(
    before: Sequence[ModelStatus], after: Sequence[ModelStatus]
) -> tuple[ModelUsage, ...]:
    """Per-model counter differences from ``before`` to ``after`` (in ``after``'s order)."""
    start = {s.model: s.counters for s in before}

    def delta(status: ModelStatus, name: str) -> float:
        return float(status.counters.get(name, 0)) - float(start.get(status.model, {}).get(name, 0))

    return tuple(
        ModelUsage(
            model=s.model,
            requests=int(delta(s, "granted")),
            rate_limited=int(delta(s, "rate_limited")),
            cooldown_s=max(0.0, delta(s, "cooldown_s")),
            input_tokens=int(delta(s, "input_tokens")),
            output_tokens=int(delta(s, "output_tokens")),
            learnt=LearntLimits.of(s),
            thinking_tokens=int(delta(s, "thinking_tokens")),
            cached_tokens=int(delta(s, "cached_tokens")),
        )
        for s in after
    )


@dataclass(frozen=True, slots=True)
class TierRow:
    tier: str
    done: int
    failed: int
    fallbacks: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    per_s: float


@dataclass(frozen=True, slots=True)
class ModelRow:
    model: str
    articles: int
    requests: int
    rate_limited: int
    cooldown_s: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    per_s: float
    learnt: LearntLimits | None = None


@dataclass(frozen=True, slots=True)
class BoundReport:
    """How close to what the quotas allow a run came. ``bound_s``: the
    dispatch planner's makespan for the run's backlog with the quotas at its
    start -- when its last request could go at the earliest; ``elapsed_s``:
    how long the run took, on the same clock."""

    bound_s: float
    elapsed_s: float
    bottlenecks: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        if self.elapsed_s <= 0:
            return 1.0
        return self.bound_s / self.elapsed_s


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Everything the end-of-run report says. ``cost_usd`` of a model row is
    what all its requests cost at list prices; a tier row's is the sum of
    its articles' shares (requests whose answers were unusable are only in
    the model rows)."""

    provider: str
    synthetic: bool
    elapsed_s: float
    tiers: tuple[TierRow, ...]
    models: tuple[ModelRow, ...]
    done: int
    failed: int
    failed_by_reason: Mapping[str, int]
    enqueued: int = 0
    already_known: int = 0
    rejected: int = 0
    left_queued: int = 0
    notes: tuple[str, ...] = field(default=())
    bound: BoundReport | None = None
    grounding: tuple[GroundingRow, ...] = ()

    @property
    def requests(self) -> int:
        return sum(m.requests for m in self.models)

    @property
    def cost_usd(self) -> float:
        return sum(m.cost_usd for m in self.models)


def build_summary(
    config: Config,
    *,
    provider: str,
    synthetic: bool,
    elapsed_s: float,
    tally: TallySnapshot,
    usage: Sequence[ModelUsage],
    enqueued: int = 0,
    already_known: int = 0,
    rejected: int = 0,
    left_queued: int = 0,
    notes: Sequence[str] = (),
    bound: BoundReport | None = None,
) -> RunSummary:
    elapsed = max(elapsed_s, 1e-9)
    tier_order = [t.name for t in config.tiers]
    seen = {t for t, _ in tally.done} | set(tally.failed_by_tier)
    tier_names = tier_order + sorted(seen - set(tier_order))
    tiers: list[TierRow] = []
    for name in tier_names:
        rows = [row for (tier, _), row in tally.done.items() if tier == name]
        done = sum(r.articles for r in rows)
        failed = tally.failed_by_tier.get(name, 0)
        if not done and not failed:
            continue
        tiers.append(
            TierRow(
                tier=name,
                done=done,
                failed=failed,
                fallbacks=sum(r.fallbacks for r in rows),
                input_tokens=sum(r.input_tokens for r in rows),
                output_tokens=sum(r.output_tokens for r in rows),
                cost_usd=sum(r.cost_usd for r in rows),
                per_s=(done + failed) / elapsed,
            )
        )
    articles_by_model: Counter[str] = Counter()
    for (_, model), row in tally.done.items():
        articles_by_model[model] += row.articles
    models: list[ModelRow] = []
    for u in usage:
        if not u.requests and not articles_by_model.get(u.model):
            continue
        try:
            spec = config.model(u.model)
            cost = usage_cost(
                spec,
                Usage(u.input_tokens, u.output_tokens, u.thinking_tokens, u.cached_tokens),
            )
        except UnknownModelError:
            cost = 0.0
        models.append(
            ModelRow(
                model=u.model,
                articles=articles_by_model.get(u.model, 0),
                requests=u.requests,
                rate_limited=u.rate_limited,
                cooldown_s=u.cooldown_s,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cost_usd=cost,
                per_s=articles_by_model.get(u.model, 0) / elapsed,
                learnt=u.learnt,
            )
        )
    return RunSummary(
        provider=provider,
        synthetic=synthetic,
        elapsed_s=elapsed_s,
        tiers=tuple(tiers),
        models=tuple(models),
        done=tally.done_total,
        failed=tally.failed_total,
        failed_by_reason=dict(tally.failed_by_reason),
        enqueued=enqueued,
        already_known=already_known,
        rejected=rejected,
        left_queued=left_queued,
        notes=tuple(notes),
        bound=bound,
        grounding=tally.grounding,
    )


def provider_line(description: str, synthetic: bool) -> str:
    """The line that says which provider runs, first thing and in the summary."""
    if synthetic:
        return f"provider: {description} — results are synthetic, not from Gemini"
    return f"provider: {description}"


def render_summary(summary: RunSummary, file: TextIO, *, width: int | None = None) -> None:
    """Print the summary tables to ``file`` (plain text when it is not a terminal)."""
    console = Console(
        file=file,
        width=width or (None if file.isatty() else 160),
        no_color=not file.isatty(),
        highlight=False,
        soft_wrap=False,
    )
    console.print()
    console.print(escape(provider_line(summary.provider, summary.synthetic)), soft_wrap=True)
    total = summary.done + summary.failed
    rate = total / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    console.print(
        f"{total} article(s) finished in {summary.elapsed_s:.1f} s ({rate:.1f}/s): "
        f"{summary.done} done, {summary.failed} failed; {summary.requests} request(s), "
        f"estimated cost ${summary.cost_usd:.4f}"
    )
    if summary.tiers:
        console.print(_tier_table(summary.tiers))
    if summary.models:
        console.print(_model_table(summary.models))
        learnt = [m.learnt.sentence() for m in summary.models if m.learnt is not None]
        if learnt:
            console.print(escape("learnt from the provider: " + "; ".join(learnt)), soft_wrap=True)
    if summary.grounding:
        console.print(_grounding_table(summary.grounding))
    if summary.failed_by_reason:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.failed_by_reason.items()))
        console.print(f"failed by reason: {reasons}")
    if summary.rejected:
        console.print(
            f"{summary.rejected} input line(s) rejected: see the rejects table "
            "(tierbatch status shows the count; the reasons and line numbers are in "
            "the database's rejects table)"
        )
    if summary.already_known:
        console.print(
            f"{summary.already_known} article id(s) were already in the database and "
            "were not queued again"
        )
    if summary.left_queued:
        console.print(
            f"{summary.left_queued} article(s) are still queued in the database; "
            "run again (or start the daemon) to finish them"
        )
    for note in summary.notes:
        console.print(note)
    if summary.bound is not None:
        console.print(escape(bound_line(summary.bound)), soft_wrap=True)


def bound_line(bound: BoundReport) -> str:
    """The summary's last word: how close to the quotas' bound the run came."""
    why = f" ({'; '.join(bound.bottlenecks)})" if bound.bottlenecks else ""
    return (
        f"bound: with the quotas at the start, this backlog's last request could go "
        f"after {bound.bound_s:.1f} s at the earliest{why}; the run took "
        f"{bound.elapsed_s:.1f} s: {bound.ratio:.0%} of the bound"
    )


def _tier_table(rows: Sequence[TierRow]) -> Table:
    table = _table("per tier")
    table.add_column("tier", no_wrap=True)
    for name in ("done", "failed", "fallbacks", "tokens\nin/out", "cost $", "finished\n/s"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            r.tier,
            str(r.done),
            str(r.failed),
            str(r.fallbacks),
            f"{_count(r.input_tokens)}/{_count(r.output_tokens)}",
            f"{r.cost_usd:.4f}",
            f"{r.per_s:.1f}",
        )
    return table


def _model_table(rows: Sequence[ModelRow]) -> Table:
    table = _table("per model")
    table.add_column("model", no_wrap=True)
    for name in ("done", "reqs", "429s", "cool\ndown s", "tokens\nin/out", "cost $"):
        table.add_column(name, justify="right")
    table.add_column("done/s", justify="right")
    table.add_column("rpm", justify="right")
    table.add_column("burst", justify="right")
    for r in rows:
        table.add_row(
            r.model,
            str(r.articles),
            str(r.requests),
            str(r.rate_limited),
            f"{r.cooldown_s:.1f}",
            f"{_count(r.input_tokens)}/{_count(r.output_tokens)}",
            f"{r.cost_usd:.4f}",
            f"{r.per_s:.1f}",
            _learnt_rpm(r.learnt),
            "-" if r.learnt is None else r.learnt.burst_text,
        )
    return table


def _learnt_rpm(learnt: LearntLimits | None) -> str:
    """``60`` while the configured limit stands, ``120→60`` once lowered."""
    if learnt is None or not learnt.configured_rpm:
        return "-"
    if learnt.learnt_rpm != learnt.configured_rpm:
        return f"{learnt.configured_rpm}→{learnt.learnt_rpm}"
    return str(learnt.configured_rpm)


def _grounding_table(rows: Sequence[GroundingRow]) -> Table:
    """What packing cost in quality: per tier, model and pack size, the share
    of entities found only in another article of the request (cross-article)
    and in none (ungrounded), before any drop."""
    table = _table("grounding per tier, model and pack size")
    table.add_column("tier", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for name in ("pack", "done", "entities", "cross-\narticle", "un-\ngrounded"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            r.tier,
            r.model,
            str(r.pack_size or "?"),
            str(r.articles),
            str(r.counts.total),
            f"{r.cross_article_share:.1%}",
            f"{r.ungrounded_share:.1%}",
        )
    return table


def _table(title: str) -> Table:
    return Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )


def _count(n: int) -> str:
    """Compact token counts: 950, 157.6k, 12.3M."""
    if abs(n) >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if abs(n) >= 10_000:
        return f"{n / 1000:.1f}k"
    return str(n)
