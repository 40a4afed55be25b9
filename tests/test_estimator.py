"""The estimator of what the provider admits (``policies.estimator``): how
it reads 429s from a token bucket. Pure: every time is a parameter."""

from __future__ import annotations

import pytest

from tierbatch.policies.estimator import EstimatorConfig, LimiterShape, LimitEstimate

RATE_S = 2.0  # 120 a minute
SHORT = 0.3  # a 429 whose next token is near: a bucket's


def estimate(rpm: int = 120) -> LimitEstimate:
    return LimitEstimate(rpm, 0, EstimatorConfig(window_s=60.0))


def burst(est: LimitEstimate, n: int, at: float = 0.0) -> list[float]:
    """``n`` requests as fast as the pacing lets them go from ``at``."""
    sent = []
    for i in range(n):
        now = max(at + i * 1e-3, est.ready_at(at + i * 1e-3))
        est.on_grant(now)
        sent.append(now)
    return sent


def refuse(
    est: LimitEstimate, now: float, sent_at: float, *, in_burst: bool, accepted: int
) -> bool:
    return est.on_rate_limited(
        now,
        tokens_scope=False,
        retry_delay_s=SHORT,
        accepted_in_window=accepted,
        tokens_in_window=0,
        in_burst=in_burst,
        observed_s=now,
        sent_at=sent_at,
    )


def test_every_short_429_of_one_burst_shrinks_the_burst_to_what_the_bucket_took():
    """The first burst (a quarter of a window: 30) meets a bucket holding 20:
    10 requests are refused, all with short delays. Only the first refusal
    cut the burst, sized by what was sent (30 -> 26), so the learnt burst
    stayed well above the bucket and every later burst met 429s again."""
    est = estimate()
    assert est.burst == 30
    sent = burst(est, 30)
    for i, at in enumerate(sent[20:]):
        keep = refuse(est, 0.1 + i * 1e-3, at, in_burst=True, accepted=20)
        assert keep is False  # a bucket never counted it: the place goes back
    assert est.shape is LimiterShape.BUCKET
    assert 10 <= est.burst <= 20
    assert est.rpm == 120  # the rate was never in question


def test_a_lone_short_429_at_the_pacing_edge_does_not_cut_the_learnt_rpm():
    """Paced at the limit's rate, a request a moment ahead of the bucket's
    refill is refused with a delay of a fraction of a second. That is the
    pacing's phase, not the rate: it cut the learnt rpm from 120 to 94
    (what a minute with a slow start had accepted), and lite ran a fifth
    slower for minutes."""
    est = estimate()
    sent = burst(est, 30)
    refuse(est, 0.1, sent[-1], in_burst=True, accepted=20)
    now = 60.4
    est.on_grant(now)
    assert refuse(est, now + 0.05, now, in_burst=False, accepted=105) is False
    assert est.rpm == 120
    # The pacing waits as the provider said before the next request goes.
    assert est.ready_at(now + 0.05) >= now + 0.05 + SHORT - 1e-9


def test_short_429s_at_the_pacing_edge_twice_in_a_window_do_lower_the_rpm():
    """A bucket that refills slower than configured refuses paced requests
    again and again: the second such refusal within a window is rate
    evidence."""
    est = estimate()
    sent = burst(est, 30)
    refuse(est, 0.1, sent[-1], in_burst=True, accepted=20)
    est.on_grant(30.0)
    refuse(est, 30.05, 30.0, in_burst=False, accepted=50)
    assert est.rpm == 120
    est.on_grant(40.0)
    refuse(est, 40.05, 40.0, in_burst=False, accepted=60)
    assert est.rpm < 120
    assert est.rpm == pytest.approx(60 * 60 / 40.05 * 0.9, abs=1.5)


def test_a_token_bucket_refusing_a_burst_of_packed_requests_shrinks_the_burst_not_the_tpm():
    """Packed requests meet the tokens-per-minute bucket first: the first
    burst's short token 429s halved the learnt tpm (and every later one
    halved it again, the floor aside), so the packed bench workload ran at
    40% of the rolling window's throughput against a bucket."""
    est = LimitEstimate(120, 600_000, EstimatorConfig(window_s=60.0))
    sent = burst(est, 30)
    for i, at in enumerate(sent[20:]):
        keep = est.on_rate_limited(
            0.1 + i * 1e-3,
            tokens_scope=True,
            retry_delay_s=SHORT,
            accepted_in_window=20,
            tokens_in_window=20 * 5_000,
            in_burst=True,
            observed_s=0.1,
            sent_at=at,
        )
        assert keep is False
    assert est.tpm == 600_000
    assert est.shape is LimiterShape.BUCKET
    assert est.burst <= 20


def test_a_long_tokens_429_still_lowers_the_tpm():
    est = LimitEstimate(120, 600_000, EstimatorConfig(window_s=60.0))
    est.on_grant(0.0)
    keep = est.on_rate_limited(
        30.0,
        tokens_scope=True,
        retry_delay_s=30.0,
        accepted_in_window=40,
        tokens_in_window=200_000,
        in_burst=False,
        observed_s=30.0,
        sent_at=0.0,
    )
    assert keep is True
    assert est.tpm == 300_000  # to what it took, never below half in one cut


def test_packed_requests_are_paced_on_their_input_tokens_too():
    """Only requests were paced: packed requests, large in tokens, went in
    bursts the tokens-per-minute bucket refused (the bench's packed bucket
    workload: 429s after the first two windows at 3%)."""
    est = LimitEstimate(120, 60_000, EstimatorConfig(window_s=60.0))
    assert est.token_burst == pytest.approx(15_000)  # a quarter window, like the burst
    for _ in range(3):
        assert est.ready_at(0.0, 5_000) == 0.0
        est.on_grant(0.0, tokens=5_000)
    # Requests are not the limit (27 more may go); tokens are: 1,000 a second.
    assert est.ready_at(0.0) == 0.0
    assert est.ready_at(0.0, 5_000) == pytest.approx(5.0)
    assert est.ready_at(2.0, 1_000) == pytest.approx(2.0)
    # A request larger than the token burst goes once the level is full.
    assert est.ready_at(0.0, 50_000) == pytest.approx(15.0)


def test_a_short_tokens_429_at_a_rolling_windows_edge_does_not_cut_the_tpm():
    """Packed requests against a rolling window, whole windows at once: at a
    window's edge the server refused a burst with its tokens about to free
    (retryDelay ~70 ms), when our window had just let the last one's go.
    The tpm was cut to what our window then held (a sliver), and the next
    three windows ran at a seventh of the quota (bench, real 60 s window)."""
    est = LimitEstimate(600, 1_500_000, EstimatorConfig(window_s=60.0, pacing=False))
    assert not est.paced
    keep = est.on_rate_limited(
        120.0,
        tokens_scope=True,
        retry_delay_s=0.07,
        accepted_in_window=5,
        tokens_in_window=20_000,
        in_burst=True,
        observed_s=120.0,
        sent_at=120.0,
    )
    assert keep is True  # it waits as the server says, its place kept
    assert est.tpm == 1_500_000


def test_a_small_limits_bucket_refusing_with_its_next_token_a_refill_away_does_not_cut_the_rpm():
    """pro at 6 requests a window against a bucket holding one: its next
    token is half a second away, longer than a tenth of the 3 s window, so
    the 429 read as "the window is full" and the rpm was cut to what had
    been accepted (pro ran at 1-2 requests a window instead of 6)."""
    window = 3.0
    est = LimitEstimate(6, 0, EstimatorConfig(window_s=window))
    assert est.short_delay == pytest.approx(2 * window / 6)
    sent = burst(est, 2)
    est.on_success(0.4, at_edge=False)
    keep = est.on_rate_limited(
        0.05,
        tokens_scope=False,
        retry_delay_s=0.49,  # one refill interval (0.5 s) less the trip
        accepted_in_window=1,
        tokens_in_window=0,
        in_burst=True,
        observed_s=0.05,
        sent_at=sent[1],
    )
    assert keep is False
    assert est.shape is LimiterShape.BUCKET
    assert est.rpm == 6
    # Paced at the rate, the next refusal a refill away is its phase.
    est.on_grant(3.0)
    est.on_rate_limited(
        3.05,
        tokens_scope=False,
        retry_delay_s=0.49,
        accepted_in_window=5,
        tokens_in_window=0,
        in_burst=False,
        observed_s=3.05,
        sent_at=3.0,
    )
    assert est.rpm == 6


def test_jitter_refusals_of_a_one_request_bucket_neither_cut_the_rpm_nor_cost_a_refill():
    """pro paced at its rate against a bucket holding one request: a request
    that reached the provider a few ms sooner after the last than it was
    sent is refused with a retryDelay of a few ms. Twice in a window halved
    the rpm (pro then ran at 3 of 6 a window), and each refusal kept the
    refused request's place in the pacing, so the retry waited a whole
    refill interval (0.5 s) instead of the few ms the provider said."""
    window = 3.0
    est = LimitEstimate(6, 0, EstimatorConfig(window_s=window))
    est.shape = LimiterShape.BUCKET
    est.burst = 1.0
    est.probing = False
    t = 10.0
    for _ in range(2):  # two refusals within one window
        t = est.ready_at(t)
        est.on_grant(t)
        est.on_rate_limited(
            t + 0.01,
            tokens_scope=False,
            retry_delay_s=0.007,
            accepted_in_window=5,
            tokens_in_window=0,
            in_burst=False,
            observed_s=t,
            sent_at=t,
        )
        assert est.ready_at(t + 0.01) == pytest.approx(t + 0.017)
        t += 0.6
    assert est.rpm == 6
    # The pacing's intervals lengthened by the jitter seen, a sliver at most.
    assert est.pace_guard_s == pytest.approx(0.014)
    assert est.rate_per_s == pytest.approx(1 / (0.5 + 0.014))
    restored = LimitEstimate(6, 0, EstimatorConfig(window_s=window))
    restored.restore(est.snapshot())
    assert restored.pace_guard_s == pytest.approx(0.014)
    for _ in range(10):
        est.on_rate_limited(
            t,
            tokens_scope=False,
            retry_delay_s=0.04,
            accepted_in_window=5,
            tokens_in_window=0,
            in_burst=False,
            observed_s=t,
            sent_at=t,
        )
        t += 3.1
    assert est.pace_guard_s == pytest.approx(0.1 * window / 6)


def test_slow_start_doubles_the_burst_per_round_trip_in_requests_and_tokens():
    """Each answer let only one more request go (the level grew by one per
    success, the tokens' not at all), so a window's first requests went
    spread over most of the window and, against a rolling window, the last
    window of a drain ended that much later."""
    est = LimitEstimate(120, 600_000, EstimatorConfig(window_s=60.0))
    assert est.burst == 30
    for _ in range(30):
        assert est.ready_at(0.0, 5_000) == 0.0
        est.on_grant(0.0, tokens=5_000)
    for _ in range(30):
        est.on_success(1.0, at_edge=False, tokens=5_000)
    assert est.burst == 60
    # Sixty more may go at once: the burst doubled in one round trip.
    for _ in range(60):
        assert est.ready_at(1.0, 5_000) == 1.0
        est.on_grant(1.0, tokens=5_000)
    for _ in range(60):
        est.on_success(2.0, at_edge=False, tokens=5_000)
    # A whole window is allowed: the pacing holds nothing back any more.
    assert est.burst == 120 and not est.probing
    assert est.shape is LimiterShape.WINDOW
    assert not est.gating and est.level(2.0) >= 120
    assert est.ready_at(2.0, 5_000) == 2.0


def test_a_burst_over_the_real_limit_at_the_edge_of_a_full_window_still_lowers_it():
    """Our window full of the configured limit, a refusal or two is an edge;
    a burst the provider refuses by half (the limit over-claimed) is not:
    once the window's refusals exceed the margin of the limit it is cut."""
    est = LimitEstimate(30, 0, EstimatorConfig(window_s=60.0, pacing=False))
    cuts = []
    for i in range(8):
        est.on_rate_limited(
            1.0 + i * 0.01,
            tokens_scope=False,
            retry_delay_s=50.0,
            accepted_in_window=10,
            tokens_in_window=0,
            in_burst=True,
            observed_s=60.0,
            sent_at=0.5,
            window_share=1.0,
        )
        cuts.append(est.rpm)
    assert cuts[:3] == [30, 30, 30]  # three refusals: within the margin (3 of 30)
    assert cuts[3] == 15 and cuts[-1] == 15  # the fourth cuts, once


def test_a_known_rolling_window_is_not_paced_on_its_tokens():
    """Against a rolling window (slow start done without a 429), the
    tokens' pacing level still refilled at the tpm's rate only: after a
    window's burst, the places the window freed went out a trickle at a
    time (bench at Gemini's 60 s window: every model at a quarter of its
    quota from the third window on, a thousand packs waiting)."""
    est = LimitEstimate(600, 1_500_000, EstimatorConfig(window_s=60.0))
    est.shape, est.burst, est.probing = LimiterShape.WINDOW, 600.0, False
    for _ in range(375):  # a window's tokens at once
        est.on_grant(0.0, tokens=4_000)
    assert not est.gating
    assert est.ready_at(0.1, 4_000) == 0.1  # the window decides, not the pacing
    est.shape = LimiterShape.BUCKET
    assert est.gating


def test_a_long_run_of_429s_keeps_only_the_last_windows_refusals():
    """The refusals were pruned only when a full window's 429 was weighed,
    so a daemon refused on any other path kept every 429 it ever had."""
    est = LimitEstimate(120, 0, EstimatorConfig(window_s=60.0))
    for i in range(1_000):
        est.on_rate_limited(
            i * 6.0,
            tokens_scope=False,
            retry_delay_s=30.0,
            accepted_in_window=10,
            tokens_in_window=0,
            in_burst=False,
            observed_s=i * 6.0,
            sent_at=i * 6.0,
        )
    assert len(est._refusals) <= 10


def test_edge_429s_and_one_later_refusal_of_a_full_window_do_not_cut_its_tpm():
    """Alone on a rolling window (bench, steady, 3 s windows): flash-lite's
    packed requests, estimated a tenth low, met three short tokens 429s at a
    window's edge with our window full (read as edges), then one with a
    delay just past the short one. The edges had counted among the window's
    refusals, whose tokens then passed the margin of the limit, and the tpm
    was cut from 75,000 to 46,017 for the rest of the drain (70% of the
    bound)."""
    est = rolling_window(30, 75_000)

    def tokens_429(now: float, delay: float, tokens: int) -> None:
        tokens_refused(
            est, now, delay, tokens, accepted=(15, 51_130), share=0.99, sent_at=now - 0.1
        )

    tokens_429(14.0, 0.139, 1_683)
    tokens_429(16.2, 0.139, 3_163)
    tokens_429(16.3, 0.139, 3_016)
    assert est.tpm == 75_000 and est.edge_guard_s == 0.0  # edges: tokens guard nothing
    tokens_429(16.5, 0.343, 3_415)  # past the short delay (0.3 s): not an edge
    assert est.tpm == 75_000
    # Refusals past the margin (7,500 tokens) that are not edges still cut it.
    tokens_429(16.6, 0.5, 3_500)
    tokens_429(16.7, 0.5, 3_500)
    assert est.tpm < 75_000


def test_two_packed_requests_refused_at_a_full_windows_start_do_not_halve_its_tpm():
    """Alone on a rolling window (bench, steady): flash's packed requests
    each carry a twelfth of its 30,000 tpm; two refused with a full
    window's delay (2.2 s of 3 s) right after its burst passed the margin
    (3,000 tokens), and the tpm was halved for the rest of the drain."""
    est = rolling_window(15, 30_000)
    for i, at in enumerate((13.4, 13.45)):
        tokens_refused(est, at, 2.2, 2_500, accepted=(7, 12_308), share=0.95, sent_at=at - 0.05)
        assert est.tpm == 30_000, f"cut at refusal {i + 1}"


def test_a_429_while_our_own_window_holds_more_than_the_limit_does_not_lower_it():
    """Trickling arrivals: waiting packs merged into granted ones at the
    grant, so the requests sent carried one and a half times the tpm by
    our own count; the provider's 429s for that excess lowered the learnt
    tpm to half (bench, daemon workload)."""
    est = rolling_window(30, 75_000)
    for i in range(6):
        tokens_refused(
            est, 7.8 + i * 0.02, 1.78, 3_800, accepted=(10, 37_694), share=1.5, sent_at=7.0
        )
    assert est.tpm == 75_000


def rolling_window(rpm: int, tpm: int) -> LimitEstimate:
    """A model at 3 s windows whose slow start showed a rolling window."""
    est = LimitEstimate(rpm, tpm, EstimatorConfig(window_s=3.0))
    est.shape, est.burst, est.probing = LimiterShape.WINDOW, float(rpm), False
    return est


def tokens_refused(
    est: LimitEstimate,
    now: float,
    delay: float,
    tokens: int,
    *,
    accepted: tuple[int, int],
    share: float,
    sent_at: float,
) -> None:
    """A tokens-per-minute 429 of a request of ``tokens`` sent in a burst;
    ``accepted``: the requests and tokens the provider accepted over the
    last window; ``share``: how full our own window is."""
    est.on_rate_limited(
        now,
        tokens_scope=True,
        retry_delay_s=delay,
        accepted_in_window=accepted[0],
        tokens_in_window=accepted[1],
        in_burst=True,
        observed_s=now,
        sent_at=sent_at,
        window_share=share,
        tokens=tokens,
    )
