"""The physical limit of a run: a small linear program over the quota.

Variables ``x[j, t, m]``: articles of tier ``t`` served by model ``m`` (a
model of the tier's chain) in window ``j`` of the run. Per window and model,
requests (``x / k_t``, ``k_t`` articles per request) stay within what the
server admits in that window -- its RPM less what another client spent
there, zero while the model is out or retired -- and so do input tokens
(``x * (a_t + o / k_t)``: the tier's mean tokens per article plus its share of
the prompt around them); over the run, requests stay within RPD; and no
tier is served more than has arrived by the end of each window. The server's
window is rolling, so any schedule it admits satisfies these per-window
limits: the LP is a relaxation, and its optimum an upper bound.

Counting the initial burst: a rolling window lets a client spend a whole
window's quota at once, at the start and again one window later, so a run
of ``n`` windows can finish its last burst at ``(n - 1) * W`` plus one
answer's latency. The bound therefore asks the LP for the fewest windows
``n`` that serve every article and puts the finish at ``(n - 1) * W`` plus
the fastest model's latency (or the last arrival plus that latency): a
finite-horizon bound that is exact about the burst, whatever the run's
length. When not even the run's horizon suffices, the bound is what the LP
serves within the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.corpus import article_tokens, request_overhead_tokens
from bench.settings import BenchSettings
from bench.workloads import Workload


class BoundUnavailable(RuntimeError):
    """scipy is not installed (it comes with the ``bench`` extra)."""


@dataclass(frozen=True, slots=True)
class Bound:
    packed: bool
    articles: int
    drainable: bool
    windows_needed: int | None
    makespan_s: float | None
    served_in_horizon: float
    horizon_s: float
    rate_per_window: float
    served_by_model: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "packed": self.packed,
            "articles": self.articles,
            "drainable": self.drainable,
            "windows_needed": self.windows_needed,
            "makespan_s": self.makespan_s,
            "served_in_horizon": self.served_in_horizon,
            "horizon_s": self.horizon_s,
            "rate_per_window": self.rate_per_window,
            "served_by_model": self.served_by_model,
        }


@dataclass(frozen=True, slots=True)
class _Problem:
    windows: int
    models: list[str]
    chains: list[tuple[str, ...]]
    per_request: list[int]
    tokens_per_article: list[float]
    overhead: float
    arrivals: list[list[float]]  # [window][tier]
    rpm: list[list[float]]  # [window][model]
    tpm: list[list[float]]
    rpd: list[float]


def _problem(settings: BenchSettings, workload: Workload, packed: bool, windows: int) -> _Problem:
    w = settings.window_s
    models = [m.name for m in settings.models]
    n_tiers = len(settings.tiers)
    tokens: list[list[float]] = [[] for _ in range(n_tiers)]
    for item in workload.articles:
        tokens[item.tier].append(article_tokens(item.article))
    arrivals = [[0.0] * n_tiers for _ in range(windows)]
    for item, offset in zip(workload.articles, workload.arrivals, strict=True):
        j = int(offset // w)
        if j < windows:  # later arrivals cannot be served within these windows
            arrivals[j][item.tier] += 1
    # Against what the server enforces, not what the systems are told.
    scale = workload.enforced
    rpm = [[float(round(settings.model(m).rpm * scale)) for m in models] for _ in range(windows)]
    tpm = [[float(round(settings.model(m).tpm * scale)) for m in models] for _ in range(windows)]
    for spend in workload.storm:
        j = int(spend.at_s // w)
        if j < windows:
            i = models.index(spend.model)
            rpm[j][i] = max(0.0, rpm[j][i] - spend.requests)
            tpm[j][i] = max(0.0, tpm[j][i] - spend.tokens)
    for j in range(windows):
        for i, m in enumerate(models):
            out = workload.outages.get(m)
            fully_out = out is not None and out[0] <= j * w and (j + 1) * w <= out[1]
            if m in workload.retired or fully_out:
                rpm[j][i] = tpm[j][i] = 0.0
    return _Problem(
        windows=windows,
        models=models,
        chains=[settings.chain(t) for t in range(n_tiers)],
        per_request=[t.per_request if packed else 1 for t in settings.tiers],
        tokens_per_article=[sum(v) / len(v) if v else 0.0 for v in tokens],
        overhead=request_overhead_tokens(),
        arrivals=arrivals,
        rpm=rpm,
        tpm=tpm,
        rpd=[float(round(settings.model(m).rpd * scale)) for m in models],
    )


def _solve(p: _Problem) -> tuple[float, dict[str, float]]:
    """Most articles servable within ``p.windows`` windows, and by which model."""
    try:
        from scipy.optimize import linprog  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BoundUnavailable("the bound needs scipy: pip install -e '.[bench]'") from exc
    index: list[tuple[int, int, int]] = []  # (window, tier, model)
    for j in range(p.windows):
        for t, chain in enumerate(p.chains):
            for m in chain:
                index.append((j, t, p.models.index(m)))
    rows: list[list[float]] = []
    bounds_ub: list[float] = []
    for j in range(p.windows):
        for mi in range(len(p.models)):
            req = [0.0] * len(index)
            tok = [0.0] * len(index)
            for v, (vj, t, vm) in enumerate(index):
                if vj == j and vm == mi:
                    req[v] = 1.0 / p.per_request[t]
                    tok[v] = p.tokens_per_article[t] + p.overhead / p.per_request[t]
            rows += [req, tok]
            bounds_ub += [p.rpm[j][mi], p.tpm[j][mi]]
    for mi, rpd in enumerate(p.rpd):
        if rpd > 0:
            rows.append([1.0 / p.per_request[t] if vm == mi else 0.0 for (_j, t, vm) in index])
            bounds_ub.append(rpd)
    for t in range(len(p.chains)):
        arrived = 0.0
        for j in range(p.windows):
            arrived += p.arrivals[j][t]
            rows.append([1.0 if (vt == t and vj <= j) else 0.0 for (vj, vt, _m) in index])
            bounds_ub.append(arrived)
    result = linprog(
        c=[-1.0] * len(index), A_ub=rows, b_ub=bounds_ub, bounds=(0, None), method="highs"
    )
    if not result.success:  # pragma: no cover - the LP is always feasible (x = 0)
        raise RuntimeError(f"bound LP failed: {result.message}")
    by_model: dict[str, float] = {}
    for value, (_j, _t, mi) in zip(result.x, index, strict=True):
        by_model[p.models[mi]] = by_model.get(p.models[mi], 0.0) + float(value)
    return float(-result.fun), by_model


def compute_bound(settings: BenchSettings, workload: Workload, *, packed: bool) -> Bound:
    w = settings.window_s
    horizon = settings.horizon_windows
    total = len(workload.articles)
    latency = min(settings.real(m.latency_s) for m in settings.models)
    last_arrival = max(workload.arrivals, default=0.0)
    served, by_model = _solve(_problem(settings, workload, packed, horizon))
    if served < total - 1e-6:
        return Bound(
            packed, total, False, None, None, served, horizon * w, served / horizon, by_model
        )
    # The fewest windows that serve everything (served(n) grows with n).
    lo, hi = 1, horizon
    while lo < hi:
        mid = (lo + hi) // 2
        if _solve(_problem(settings, workload, packed, mid))[0] >= total - 1e-6:
            hi = mid
        else:
            lo = mid + 1
    makespan = max((lo - 1) * w, last_arrival) + latency
    rate = total / (makespan / w)
    return Bound(packed, total, True, lo, makespan, served, horizon * w, rate, by_model)
