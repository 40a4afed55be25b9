"""The four workloads of the issue, as data every system is run on.

* ``steady``: a backlog queued at the start, large enough that the bound
  itself needs about ``backlog_windows`` quota-minutes to drain it; three
  tiers whose primaries saturate, so fallbacks must carry the rest.
* ``daemon``: a stream of arrivals at 60% of the packed capacity with two
  bursts of 1.5 windows' worth arriving within a fifth of a window.
* ``storm``: the steady backlog while another client, unknown to the system
  under test, spends half of the pro and flash quotas (same API key) in
  small steady chunks, from the third window to three windows before the end.
* ``outage``: the steady backlog while pro answers 503 from the third to
  the fifth window and flash is retired (404) for the whole run.

Times are seconds from the start of the run (the server's start, which the
harness aligns with the system's start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.corpus import BenchArticle, article_tokens, make_articles, request_overhead_tokens
from bench.settings import FLASH, PRO, BenchSettings

STORM_FRACTION = 0.5
STORM_CHUNKS_PER_WINDOW = 20
BASE_ARRIVAL_LOAD = 0.6
BURST_LOAD = 1.5
BURST_SPREAD = 0.2
OVERCLAIM_ENFORCED = 0.5
BUCKET_S = 10.0


@dataclass(frozen=True, slots=True)
class StormSpend:
    at_s: float
    model: str
    requests: int
    tokens: int


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    description: str
    articles: list[BenchArticle]
    arrivals: list[float]
    storm: tuple[StormSpend, ...] = ()
    outages: dict[str, tuple[float, float]] = field(default_factory=dict)
    retired: tuple[str, ...] = ()
    # The share of each configured limit the server really enforces (the
    # systems are told the configured ones): 0.5 is a config that over-claims 2x.
    enforced: float = 1.0
    # How the server enforces a per-minute limit: a rolling window, or a token
    # bucket holding ``bucket_s`` unscaled seconds' worth, refilled at the rate.
    limiter: str = "window"
    bucket_s: float = 10.0

    @property
    def size(self) -> int:
        return len(self.articles)


def mean_article_tokens(articles: Sequence[BenchArticle], tier: int) -> float:
    values = [article_tokens(a.article) for a in articles if a.tier == tier]
    return sum(values) / len(values) if values else 0.0


def packed_capacity(settings: BenchSettings, per_article_tokens: float) -> float:
    """Articles per window when every model serves its own tier fully packed:
    the size of the quota, used to size the workloads (the LP gives the
    exact bound)."""
    overhead = request_overhead_tokens()
    total = 0.0
    for model in settings.models:
        ks = [t.per_request for t in settings.tiers if t.model == model.name]
        if not ks:
            continue
        k = max(ks)
        per_request = overhead + k * per_article_tokens
        requests = min(float(model.rpm), model.tpm / per_request)
        total += requests * k
    return total


def _probe_tokens(settings: BenchSettings) -> float:
    sample = make_articles(settings, 200, "probe")
    return sum(article_tokens(a.article) for a in sample) / len(sample)


def build_workload(settings: BenchSettings, name: str) -> Workload:
    capacity = packed_capacity(settings, _probe_tokens(settings))
    w = settings.window_s
    if name == "daemon":
        return _daemon(settings, capacity)
    size = max(20, round(capacity * settings.backlog_windows))
    articles = make_articles(settings, size, name)
    arrivals = [0.0] * size
    if name == "steady":
        return Workload(
            name,
            "backlog queued at the start; primaries saturate, fallbacks carry the rest",
            articles,
            arrivals,
        )
    if name == "storm":
        start, end = 2 * w, max(3, settings.horizon_windows - 3) * w
        return Workload(
            name,
            f"backlog; another client spends {STORM_FRACTION:.0%} of {PRO} and {FLASH} "
            f"quota (same key) from {start:g}s to {end:g}s",
            articles,
            arrivals,
            storm=_storm(settings, (PRO, FLASH), start, end),
        )
    if name == "outage":
        start, end = 2 * w, 5 * w
        return Workload(
            name,
            f"backlog; {PRO} answers 503 from {start:g}s to {end:g}s, {FLASH} is retired (404)",
            articles,
            arrivals,
            outages={PRO: (start, end)},
            retired=(FLASH,),
        )
    if name == "overclaimed":
        return Workload(
            name,
            f"backlog; the config claims {1 / OVERCLAIM_ENFORCED:g}x the limits the server "
            "enforces (the bound is the enforced one's)",
            articles,
            arrivals,
            enforced=OVERCLAIM_ENFORCED,
        )
    if name == "bucket":
        return Workload(
            name,
            f"backlog; the server enforces each per-minute limit as a token bucket holding "
            f"{BUCKET_S:g} s' worth (unscaled), refilled at the limit's rate",
            articles,
            arrivals,
            limiter="bucket",
            bucket_s=BUCKET_S,
        )
    raise ValueError(f"unknown workload {name!r}")


def _daemon(settings: BenchSettings, capacity: float) -> Workload:
    w = settings.window_s
    times: list[float] = []
    base = max(1, round(BASE_ARRIVAL_LOAD * capacity))
    bursts = {j for j in (2, 5) if j < settings.arrival_windows}
    for j in range(settings.arrival_windows):
        times.extend(j * w + (i + 0.5) * w / base for i in range(base))
        if j in bursts:
            extra = max(1, round(BURST_LOAD * capacity))
            times.extend(j * w + (i + 0.5) * BURST_SPREAD * w / extra for i in range(extra))
    times.sort()
    articles = make_articles(settings, len(times), "daemon")
    return Workload(
        "daemon",
        f"stream at {BASE_ARRIVAL_LOAD:.0%} of packed capacity for "
        f"{settings.arrival_windows} windows, bursts of {BURST_LOAD:g} windows' worth "
        f"in windows {sorted(bursts)}",
        articles,
        times,
    )


def _storm(
    settings: BenchSettings, models: Sequence[str], start: float, end: float
) -> tuple[StormSpend, ...]:
    w = settings.window_s
    step = w / STORM_CHUNKS_PER_WINDOW
    chunks = max(1, round((end - start) / step))
    spends: list[StormSpend] = []
    for name in models:
        quota = settings.model(name)
        per_chunk_requests = STORM_FRACTION * quota.rpm / STORM_CHUNKS_PER_WINDOW
        per_chunk_tokens = STORM_FRACTION * quota.tpm / STORM_CHUNKS_PER_WINDOW
        for i in range(chunks):
            requests = round((i + 1) * per_chunk_requests) - round(i * per_chunk_requests)
            tokens = round((i + 1) * per_chunk_tokens) - round(i * per_chunk_tokens)
            if requests or tokens:
                spends.append(StormSpend(start + i * step, name, requests, tokens))
    spends.sort(key=lambda s: s.at_s)
    return tuple(spends)
