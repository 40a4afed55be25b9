"""Per-run metrics, from the results the system reported and the server's log.

Definitions (the report repeats them):

* articles per quota-minute: articles extracted by the deadline, divided by
  the run's length in windows -- from the start to the last terminal result
  when every article became terminal in time, else the whole horizon;
* lost: articles handed to the system that at the end have no terminal
  result and are not among those it says it still holds; duplicated:
  articles with more than one terminal result;
* unverified: articles reported extracted by a model that, per the
  server's log, never answered a request carrying them; re-served: articles
  the server answered more than once (quota spent twice);
* fallback: an article extracted by a model other than its tier's primary;
  tier fidelity: the share of a tier's extracted articles served by its
  primary, and by any model of its chain; hot fidelity when the primary had
  room: of the hot articles served while the server would have admitted
  one more hot request to the primary (its rolling window, the other
  client's spending included, not full, not out, not retired), the share
  served by the primary;
* completion time: from an article's arrival to its terminal result.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from bench.bound import Bound
from bench.harness import SystemResult
from bench.measure import Completion, Recorder, classify_cpu
from bench.settings import BenchSettings
from bench.workloads import Workload

BINS_PER_WINDOW = 4


SETTLE_WINDOWS = 2


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _admitted(entry: dict[str, Any]) -> bool:
    """The server counted the request against quota (answered, or a fault
    drawn after admission)."""
    return entry["status"] == 200 or (bool(entry["fault"]) and entry["fault"] != "outage")


def compute_metrics(
    *,
    settings: BenchSettings,
    workload: Workload,
    system: str,
    t0: float,
    deadline: float,
    recorder: Recorder,
    result: SystemResult,
    server_log: list[dict[str, Any]],
    server_started_at: float,
    process_cpu_s: float,
    peak_rss_mb: float,
    bounds: dict[str, Bound | None],
) -> dict[str, Any]:
    w = settings.window_s
    tiers = {a.article.id: a.tier for a in workload.articles}
    arrival = {
        a.article.id: t0 + off for a, off in zip(workload.articles, workload.arrivals, strict=True)
    }
    first: dict[str, Completion] = {}
    for c in sorted(recorder.completions, key=lambda c: c.at):
        first.setdefault(c.article_id, c)
    terminal = set(first)
    done = {i: c for i, c in first.items() if c.ok}
    done_in_time = {i: c for i, c in done.items() if c.at <= deadline}
    last_terminal = max((c.at for c in first.values()), default=t0)
    drained = len(terminal) == workload.size and last_terminal <= deadline
    elapsed = (last_terminal - t0) if drained else settings.horizon_s
    elapsed = max(elapsed, 1e-9)
    rate = len(done_in_time) / (elapsed / w)

    lost = result.fed - terminal - result.unfinished
    held_and_terminal = result.unfinished & terminal

    # The server's view.
    requests = len(server_log)
    status = Counter(e["status"] for e in server_log)
    rate_limited = status.get(429, 0)
    served_by: dict[str, set[str]] = defaultdict(set)
    answered_times: Counter[str] = Counter()
    for e in server_log:
        if e["status"] == 200:
            for i in e["ids"]:
                served_by[i].add(e["model"])
                answered_times[i] += 1
    # After the first two windows: what is left once a system has had the
    # time to learn a limit it was told wrong (the over-claimed and bucket targets).
    settled = [e for e in server_log if e["at"] >= t0 + SETTLE_WINDOWS * w]
    settled_limited = sum(1 for e in settled if e["status"] == 429)
    unverified = sum(1 for i, c in done.items() if c.model not in served_by.get(i, set()))
    reserved = sum(1 for n in answered_times.values() if n > 1)

    # Tiers and fallbacks.
    fidelity: dict[str, dict[str, Any]] = {}
    completion: dict[str, dict[str, float | None]] = {}
    fallback_articles = 0
    for t, plan in enumerate(settings.tiers):
        chain = settings.chain(t)
        served = [c for i, c in done_in_time.items() if tiers[i] == t]
        primary = sum(1 for c in served if c.model == plan.model)
        in_chain = sum(1 for c in served if c.model in chain)
        fallback_articles += len(served) - primary
        fidelity[plan.name] = {
            "served": len(served),
            "articles": sum(1 for a in workload.articles if a.tier == t),
            "primary": primary / len(served) if served else None,
            "chain": in_chain / len(served) if served else None,
        }
        times = [c.at - arrival[c.article_id] for c in served]
        completion[plan.name] = {"p50_s": percentile(times, 50), "p99_s": percentile(times, 99)}

    hot_when_free = _hot_fidelity_when_primary_free(
        settings, workload, server_log, tiers, server_started_at
    )

    cpu_classes = classify_cpu(result.cpu_by_thread)

    def per_request(seconds: float) -> float | None:
        return seconds / requests * 1e6 if requests else None

    stats = dict(result.stats)
    calls = stats.pop("calls", None)
    if calls is not None:
        stats["lags_ms"] = _lags(calls, server_log)
    metrics: dict[str, Any] = {
        "system": system,
        "workload": workload.name,
        "articles": workload.size,
        "fed": len(result.fed),
        "done": len(done),
        "done_in_horizon": len(done_in_time),
        "failed": len(terminal) - len(done),
        "unfinished": len(result.unfinished),
        "lost": len(lost),
        "held_and_terminal": len(held_and_terminal),
        "duplicated": recorder.duplicates(),
        "unverified": unverified,
        "re_served": reserved,
        "drained": drained,
        "elapsed_s": elapsed,
        "articles_per_window": rate,
        "requests": requests,
        "status": {str(k): v for k, v in sorted(status.items())},
        "rate_limited": rate_limited,
        "rate_limited_per_1000": rate_limited / requests * 1000 if requests else 0.0,
        "rate_limited_settled_per_1000": (
            settled_limited / len(settled) * 1000 if settled else 0.0
        ),
        "fallback_articles": fallback_articles,
        "fidelity": fidelity,
        "hot_fidelity_when_primary_free": hot_when_free,
        "completion": completion,
        "cpu": {
            "process_s": process_cpu_s,
            "process_per_request_us": per_request(process_cpu_s),
            "process_per_article_us": process_cpu_s / len(done) * 1e6 if done else None,
            "threads": cpu_classes,
            "actors_per_request_us": per_request(cpu_classes["actors"]),
            "io_per_request_us": per_request(cpu_classes["io"]),
        },
        "peak_rss_mb": peak_rss_mb,
        "system_stats": stats,
        "cpu_by_thread": result.cpu_by_thread,
        "bounds": {k: (b.to_dict() if b else None) for k, b in bounds.items()},
        "series": _series(
            settings, workload, t0, done_in_time, tiers, server_log, server_started_at
        ),
    }
    packed = system == "tierbatch-packed"
    own = bounds.get("packed" if packed else "unpacked")
    metrics["bound_used"] = "packed" if packed else "unpacked"
    metrics["bound_ratio"] = rate / own.rate_per_window if own and own.rate_per_window else None
    return metrics


def _lags(calls: list[list[Any]], server_log: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the time between a grant and the server's admission goes: from
    the grant to the call's start (client side), and from the call's start
    to the server's time stamp (sending, and queueing in the server)."""
    arrivals: dict[tuple[str, tuple[str, ...]], list[float]] = defaultdict(list)
    for e in server_log:
        arrivals[(e["model"], tuple(e["ids"]))].append(e["at"])
    for times in arrivals.values():
        times.reverse()
    to_send: list[float] = []
    to_server: list[float] = []
    for granted, started, model, ids in calls:
        to_send.append((started - granted) * 1000)
        matches = arrivals.get((model, tuple(ids)))
        if matches:
            to_server.append((matches.pop() - started) * 1000)

    def summary(values: list[float]) -> dict[str, float | None]:
        return {
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": max(values) if values else None,
        }

    return {"grant_to_call": summary(to_send), "call_to_server": summary(to_server)}


def _hot_fidelity_when_primary_free(
    settings: BenchSettings,
    workload: Workload,
    server_log: list[dict[str, Any]],
    tiers: dict[str, int],
    server_started_at: float,
) -> float | None:
    hot = settings.tiers[0]
    primary = settings.model(hot.model)
    w = settings.window_s
    if hot.model in workload.retired:
        return None
    used: list[tuple[float, int, int]] = []  # (time, requests, tokens) admitted on the primary
    for e in server_log:
        if e["model"] == hot.model and _admitted(e):
            used.append((e["at"], 1, e["tokens"]))
    for s in workload.storm:
        if s.model == hot.model:
            used.append((server_started_at + s.at_s, s.requests, s.tokens))
    used.sort()
    times = [u[0] for u in used]
    req_prefix = [0]
    tok_prefix = [0]
    for _t, r, k in used:
        req_prefix.append(req_prefix[-1] + r)
        tok_prefix.append(tok_prefix[-1] + k)
    outage = workload.outages.get(hot.model)
    on_primary = 0
    avoidable = 0
    for e in server_log:
        if e["status"] != 200:
            continue
        hot_ids = sum(1 for i in e["ids"] if tiers.get(i) == 0)
        if not hot_ids:
            continue
        if e["model"] == hot.model:
            on_primary += hot_ids
            continue
        t = e["at"]
        if outage and outage[0] <= t - server_started_at < outage[1]:
            continue
        lo, hi = bisect_right(times, t - w), bisect_left(times, t)
        requests = req_prefix[hi] - req_prefix[lo]
        tokens = tok_prefix[hi] - tok_prefix[lo]
        if requests < primary.rpm and tokens + e["tokens"] <= primary.tpm:
            avoidable += hot_ids
    total = on_primary + avoidable
    return on_primary / total if total else None


def _series(
    settings: BenchSettings,
    workload: Workload,
    t0: float,
    done: dict[str, Completion],
    tiers: dict[str, int],
    server_log: list[dict[str, Any]],
    server_started_at: float,
) -> dict[str, Any]:
    """Counts per bin of a quarter window, from the start of the run."""
    width = settings.window_s / BINS_PER_WINDOW
    n = settings.horizon_windows * BINS_PER_WINDOW + BINS_PER_WINDOW

    def index(at: float) -> int | None:
        i = int((at - t0) // width)
        return i if 0 <= i < n else None

    completions = {p.name: [0] * n for p in settings.tiers}
    for c in done.values():
        i = index(c.at)
        if i is not None:
            completions[settings.tiers[tiers[c.article_id]].name][i] += 1
    requests = {m.name: [0] * n for m in settings.models}
    tokens = {m.name: [0] * n for m in settings.models}
    limited = [0] * n
    for e in server_log:
        i = index(e["at"])
        if i is None:
            continue
        if e["status"] == 429:
            limited[i] += 1
        elif _admitted(e) and e["model"] in requests:
            requests[e["model"]][i] += 1
            tokens[e["model"]][i] += e["tokens"]
    other = {m.name: [0] * n for m in settings.models}
    for s in workload.storm:
        i = index(server_started_at + s.at_s)
        if i is not None:
            other[s.model][i] += s.requests
    return {
        "bin_s": width,
        "completions": completions,
        "requests": requests,
        "tokens": tokens,
        "rate_limited": limited,
        "other_client_requests": other,
    }
