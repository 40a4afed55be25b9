"""End to end on the simulated provider: thousands of articles, three tiers,
quotas tight enough to force 429s, cooldowns and fallbacks. Everything is
checked from the provider's call log, the registry's own decisions and the
sink -- never from timings."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import replace

import pytest
from runtime_helpers import (
    FLASH,
    LITE,
    PRO,
    RecordingObserver,
    make_articles,
    small_config,
)

from tierbatch.actors.clock import ScaledClock
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.adapters.simulation.simulated import SimulatedProvider
from tierbatch.policies.config import LimiterMode
from tierbatch.policies.results import Done

SPEED = 40.0  # one rate-limit minute lasts 1.5 real seconds
WINDOW = 60.0


@pytest.fixture(scope="module")
def run():
    """One run of 3,000 articles where the provider's real limits for flash
    are tighter than the config claims, so 429s, cooldowns and fallbacks
    must happen and be handled."""
    # The replays below model the registry's rolling-window view, so this run
    # assumes a rolling window (no pacing, no learnt limits); the default
    # "auto" limiter is run end to end in tests/test_limiter_shapes.py.
    config = small_config()
    config = replace(
        config, quota=replace(config.quota, limiter=LimiterMode.WINDOW, learn_limits=False)
    )
    clock = ScaledClock(SPEED)
    provider_limits = dict(config.models)
    provider_limits[FLASH] = replace(config.models[FLASH], rpm=40)
    provider = SimulatedProvider(provider_limits, clock, seed=3, latency_s=0.5)
    sink = CollectingSink()
    observer = RecordingObserver()
    articles = make_articles(3000)
    threads_before = set(threading.enumerate())
    with Runtime(config, provider, sink, clock=clock, observer=observer) as runtime:
        receipt = runtime.submit(articles)
        assert runtime.drain(timeout=120)
        stats = runtime.stats()
    leaked = set(threading.enumerate()) - threads_before
    return {
        "config": config,
        "articles": articles,
        "receipt": receipt,
        "stats": stats,
        "calls": provider.calls,
        "results": sink.results,
        "observer": observer,
        "leaked": leaked,
    }


def test_every_article_terminal_exactly_once(run):
    ids = [r.article_id for r in run["results"]]
    assert run["receipt"].accepted == 3000
    assert len(ids) == len(set(ids)) == 3000
    assert set(ids) == {a.id for a in run["articles"]}
    assert all(isinstance(r, Done) for r in run["results"])


def test_quota_pressure_really_happened(run):
    outcomes = Counter(c.outcome for c in run["calls"])
    assert outcomes["rate_limited"] > 0, outcomes
    assert run["observer"].cooldowns, "a 429 must put the model in cooldown"
    assert run["stats"].fallbacks > 0


def test_no_grant_inside_a_cooldown(run):
    observer = run["observer"]
    for model, start, until, _ in observer.cooldowns:
        inside = [
            g for g, _ in observer.grants if g.model == model and start <= g.granted_at < until
        ]
        assert not inside, f"{model} granted during its cooldown [{start}, {until})"


def test_every_call_was_granted_and_within_the_configured_rpm(run):
    config = run["config"]
    granted = {g.grant_id: g for g, _ in run["observer"].grants}
    by_model: dict[str, list[float]] = defaultdict(list)
    for call in run["calls"]:
        grant = granted[call.grant_id]  # every call went through the registry
        assert grant.model == call.model
        if call.outcome != "rate_limited":  # a refused request is not counted
            by_model[call.model].append(observer_counted_at(run, grant))
    window = WINDOW + config.quota.margin_s
    for model, times in by_model.items():
        times.sort()
        rpm = config.models[model].rpm
        for i in range(len(times) - rpm):
            assert times[i + rpm] - times[i] >= window, (
                f"{model}: more than {rpm} grants in a window"
            )


def observer_counted_at(run, grant):
    return run["observer"].counted_at(grant)


def test_granted_tokens_within_tpm(run):
    config = run["config"]
    window = WINDOW + config.quota.margin_s
    for model in (PRO, FLASH, LITE):
        grants = sorted(
            (g.granted_at, g.est_tokens) for g, _ in run["observer"].grants if g.model == model
        )
        tpm = config.models[model].tpm
        start = 0
        total = 0
        for t, tokens in grants:
            total += tokens
            while grants[start][0] <= t - window:
                total -= grants[start][1]
                start += 1
            assert total <= tpm


def test_hot_tier_uses_its_primary_whenever_it_has_room(run):
    """A hot pack only ever goes to a fallback when the primary's window is
    full or the primary is cooling down at that moment -- replaying the
    registry's own view: each request counts from its grant until the
    registry hears it was sent, and from its send time after that."""
    config = run["config"]
    observer = run["observer"]
    window = WINDOW + config.quota.margin_s
    rpm = config.models[PRO].rpm
    pro_cooldowns = [(s, u) for m, s, u, _ in observer.cooldowns if m == PRO]
    pro_window: dict[int, float] = {}  # grant id -> when the registry counts it from
    hot_fallbacks = 0
    for kind, subject, value in observer.events:
        if kind == "sent":
            if subject in pro_window:
                pro_window[subject] = max(pro_window[subject], value)
            continue
        grant, rank = subject, int(value)
        if grant.model == PRO:
            pro_window[grant.grant_id] = grant.granted_at
        elif rank == 0:
            hot_fallbacks += 1
            t = grant.granted_at
            in_window = sum(1 for x in pro_window.values() if t - window < x <= t)
            cooling = any(s <= t < u for s, u in pro_cooldowns)
            assert in_window >= rpm or cooling, (
                f"hot pack sent to {grant.model} while {PRO} had room"
            )
    assert hot_fallbacks > 0
    hot_done = [r for r in run["results"] if r.tier == "hot"]
    assert sum(r.model == PRO for r in hot_done) > 0


def test_hot_tier_finishes_first(run):
    latency: dict[str, list[float]] = defaultdict(list)
    for r in run["results"]:
        latency[r.tier].append(r.latency_s)
    median = {tier: sorted(v)[len(v) // 2] for tier, v in latency.items()}
    assert median["hot"] < median["warm"]
    assert median["hot"] < median["cold"]


def test_no_threads_left_after_stop(run):
    assert not run["leaked"], run["leaked"]
