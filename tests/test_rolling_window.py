"""The rolling window's O(log n) sums against a plain list of entries."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierbatch.policies.rolling_window import RollingWindow

SPAN = 60.0


class Reference:
    """Every entry with its effective expiry (its slot's end)."""

    def __init__(self, window: RollingWindow) -> None:
        self.window = window
        self.entries: dict[int, tuple[float, int]] = {}

    def live(self, now):
        alive = [(e, t) for e, t in self.entries.values() if e > now]
        return len(alive), sum(t for _, t in alive)

    def frees_at(self, now, rpm, tpm, est):
        alive = sorted((e, t) for e, t in self.entries.values() if e > now)
        requests, tokens = len(alive), sum(t for _, t in alive)
        if (not rpm or requests + 1 <= rpm) and (not tpm or tokens + est <= tpm):
            return now
        for expiry, _ in alive:
            later = [x for x in alive if x[0] > expiry]
            r, t = len(later), sum(x[1] for x in later)
            if (not rpm or r + 1 <= rpm) and (not tpm or t + est <= tpm):
                return expiry
        return math.inf


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.floats(0.01, SPAN), st.integers(0, 50)),
        st.tuples(st.just("remove"), st.integers(0, 200), st.just(0)),
        st.tuples(st.just("retoken"), st.integers(0, 200), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.floats(0, 30), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 8), st.sampled_from([0, 40, 120]), st.integers(0, 40))
def test_sums_and_frees_at_match_a_plain_list(steps, rpm, tpm, est):
    window = RollingWindow(SPAN, slots=64)
    ref = Reference(window)
    handles: dict[int, tuple[int, int]] = {}
    now = 0.0
    n = 0
    for op, a, b in steps:
        if op == "add":
            slot = window.add(now + a, b, now)
            handles[n] = (slot, b)
            ref.entries[n] = (window.slot_end(slot), b)
            n += 1
        elif op == "remove" and handles:
            key = sorted(handles)[int(a) % len(handles)]
            slot, tokens = handles.pop(key)
            if window.remove(slot, tokens):
                del ref.entries[key]
            else:
                assert ref.entries.pop(key)[0] <= now
        elif op == "retoken" and handles:
            key = sorted(handles)[int(a) % len(handles)]
            slot, tokens = handles[key]
            if window.retoken(slot, tokens, b):
                handles[key] = (slot, b)
                ref.entries[key] = (ref.entries[key][0], b)
        elif op == "tick":
            now += a
            if a > 10:
                window.expire(now)
        assert window.live(now) == ref.live(now)
        if tpm and est > tpm:
            continue
        assert window.frees_at(now, rpm, tpm, est) == pytest.approx(
            ref.frees_at(now, rpm, tpm, est)
        )


def test_a_place_never_leaves_before_its_expiry():
    window = RollingWindow(SPAN, slots=1024)
    slot = window.add(61.7, 5, 1.7)
    assert window.slot_end(slot) >= 61.7
    assert window.frees_at(61.69, 1, 0, 0) >= 61.7
    assert window.frees_at(window.slot_end(slot), 1, 0, 0) == window.slot_end(slot)
    assert window.oldest_expiry(10) == window.slot_end(slot)


def test_bad_spans_are_refused():
    with pytest.raises(ValueError, match="span_s"):
        RollingWindow(0)
    window = RollingWindow(SPAN, slots=16)
    with pytest.raises(ValueError, match="beyond"):
        window.add(500.0, 1, 0.0)
