"""A rolling window's edge is not a token bucket, nor a lower limit.

The quota policy (``limiter = "auto"``, learning on) drives the local
server's rolling-window quota in simulated time, alone on it. At a window's
edge our window frees a place the provider has not freed yet, and it
refuses a request with a short ``retryDelay``: either the tokens bind and
the requests carried more than estimated (packed requests: their input
tokens are estimated before the call), or the requests bind and the oldest
ones reached the provider later than the new ones (a busy client's send
lag varies by more than the window margin). Those refusals were read as a
token bucket (the burst and the token pacing shrank) and as a lower limit
(a tenth off the tpm), and the windows after ran below the quota.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from tierbatch.adapters.simulation.quota_emulator import QuotaEmulator
from tierbatch.policies.config import ModelSpec, QuotaConfig
from tierbatch.policies.estimator import LimiterShape
from tierbatch.policies.outcomes import RateLimited, Succeeded, Usage
from tierbatch.policies.quota import Grant, QuotaPolicy, Wait

MODEL = "gemini-2.5-flash-lite"
WINDOW_S = 60.0
RPM, TPM = 30, 75_000
TOKENS = 3_560  # a packed request's estimate: the tokens bind at 21 a window
SPREAD = 0.06  # its real tokens, within 6% of the estimate
SEND_GAP_S = 0.04  # the client puts one request on the wire every 40 ms
LATENCY_S = 2.0
T0 = 1_800_000_000.0


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    grant: Grant | None = field(compare=False, default=None)
    refusal: RateLimited | None = field(compare=False, default=None)


def _run(
    windows: int, *, tokens: int = TOKENS, spread: float = SPREAD, lag_s: float = 0.0
) -> tuple[QuotaPolicy, dict[int, int], list[float]]:
    """Accepted requests per provider window, and when requests were
    refused. Requests carry ``tokens`` estimated, within ``spread`` of it
    really, and each reaches the provider up to ``lag_s`` late (uniform)."""
    spec = ModelSpec(MODEL, rpm=RPM, tpm=TPM, rpd=0)
    policy = QuotaPolicy({MODEL: spec}, QuotaConfig(window_s=WINDOW_S))
    server = QuotaEmulator({MODEL: spec}, WINDOW_S)
    events: list[_Event] = []
    seq = 0
    wire_free = T0  # when the client can put the next request on the wire
    now = T0
    accepted: dict[int, int] = {}
    refused: list[float] = []
    rng = random.Random(20261202)
    real_tokens: dict[int, int] = {}

    def push(at: float, kind: str, **kw: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, _Event(at, seq, kind, **kw))  # type: ignore[arg-type]

    push(T0, "wake")
    end = T0 + windows * WINDOW_S
    while events and now < end:
        event = heapq.heappop(events)
        now = event.at
        if event.kind == "arrive":
            assert event.grant is not None
            violation = server.check("key", MODEL, real_tokens[event.grant.grant_id], now)
            if violation is None:
                index = int((now - T0) // WINDOW_S)
                accepted[index] = accepted.get(index, 0) + 1
                push(now + LATENCY_S, "done", grant=event.grant)
            else:
                refused.append(now - T0)
                refusal = RateLimited(scope=violation.scope, retry_delay_s=violation.retry_delay_s)
                push(now + 0.001, "refused", grant=event.grant, refusal=refusal)
        elif event.kind == "done":
            assert event.grant is not None
            usage = Usage(input_tokens=real_tokens[event.grant.grant_id], output_tokens=100)
            policy.report(event.grant.grant_id, Succeeded(usage=usage), now)
        elif event.kind == "refused":
            assert event.grant is not None and event.refusal is not None
            policy.report(event.grant.grant_id, event.refusal, now)
        # Take every grant the policy gives now; each goes on the wire in turn.
        while True:
            result = policy.acquire([MODEL], tokens, now)
            if not isinstance(result, Grant):
                if isinstance(result, Wait) and result.until is not None:
                    push(max(result.until, now + 1e-6), "wake")
                break
            real_tokens[result.grant_id] = round(tokens * rng.uniform(1 - spread, 1 + spread))
            wire_free = max(wire_free, now) + SEND_GAP_S
            policy.sent(result.grant_id, now)  # the call starts (not yet on the wire)
            push(wire_free + rng.uniform(0.0, lag_s), "arrive", grant=result)
    return policy, accepted, refused


def test_short_429s_at_a_rolling_windows_edge_do_not_shrink_the_burst_as_a_buckets_would() -> None:
    """Tokens bind; the estimates are within 6% of the truth."""
    policy, accepted, refused = _run(windows=12)
    estimate = policy._models[MODEL].estimate
    assert estimate.shape is LimiterShape.WINDOW  # was: BUCKET
    assert estimate.burst == RPM  # was: 2
    assert estimate.tpm == TPM  # a refusal within the margin of it cut it by a tenth
    by_tokens = TPM / TOKENS
    steady = [accepted.get(i, 0) for i in range(2, 12)]
    assert min(steady) >= int(by_tokens) - 1, accepted
    assert sum(steady) >= 0.95 * by_tokens * len(steady), accepted
    assert len(refused) <= 0.03 * sum(accepted.values()), refused


def test_a_send_lag_longer_than_the_margin_is_learnt_as_the_windows_edge_guard() -> None:
    """Requests bind (30 a window); each reaches the provider up to 1 s
    after we counted it sent, twice the window margin."""
    policy, accepted, refused = _run(windows=12, tokens=500, spread=0.0, lag_s=1.0)
    estimate = policy._models[MODEL].estimate
    assert estimate.shape is not LimiterShape.BUCKET
    assert estimate.rpm == RPM
    assert estimate.burst == RPM
    steady = [accepted.get(i, 0) for i in range(2, 12)]
    assert sum(steady) >= 0.95 * RPM * len(steady), accepted
    assert len(refused) <= 0.01 * sum(accepted.values()), refused
    # What the edges said of the lag is now part of our window.
    assert 0.0 < estimate.edge_guard_s <= 1.0
