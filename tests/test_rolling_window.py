"""The rolling window's O(log n) sums against a plain list of entries."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierbatch.policies.rolling_window import RollingWindow

SPAN = 60.0


class Reference:
    def __init__(self) -> None:
        self.entries: dict[int, tuple[float, int]] = {}

    def live(self, now):
        alive = [(e, t) for e, t in self.entries.values() if e > now]
        return len(alive), sum(t for _, t in alive)

    def frees_at(self, now, rpm, tpm, est):
        alive = sorted((e, t) for e, t in self.entries.values() if e > now)
        candidates = [now] + [e for e, _ in alive]
        for moment in candidates:
            later = [x for x in alive if x[0] > moment]
            r, t = len(later), sum(x[1] for x in later)
            if (not rpm or r + 1 <= rpm) and (not tpm or t + est <= tpm):
                return moment
        return math.inf


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.floats(0.0, SPAN), st.integers(0, 50)),
        st.tuples(st.just("hold"), st.floats(0.0, SPAN), st.integers(0, 50)),
        st.tuples(st.just("place"), st.integers(0, 200), st.floats(0.0, SPAN)),
        st.tuples(st.just("remove"), st.integers(0, 200), st.just(0)),
        st.tuples(st.just("retoken"), st.integers(0, 200), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.floats(0, 30), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 8), st.sampled_from([0, 40, 120]), st.integers(0, 40))
def test_sums_and_frees_at_match_a_plain_list(steps, rpm, tpm, est):
    window = RollingWindow()
    ref = Reference()
    handles: list[int] = []
    now = 0.0
    for op, a, b in steps:
        if op == "add":
            handle = window.add(now + a, b)
            handles.append(handle)
            ref.entries[handle] = (window.expiry(handle), b)
            assert window.expiry(handle) == now + a  # exact, in or out of order
        elif op == "hold":
            handle = window.hold(b, now + a)
            handles.append(handle)
            ref.entries[handle] = (now + a, b)
        elif op == "place" and handles:
            handle = handles[int(a) % len(handles)]
            if window.place(handle, now + b):
                ref.entries[handle] = (now + b, ref.entries[handle][1])
        elif op == "remove" and handles:
            handle = handles[int(a) % len(handles)]
            if window.remove(handle):
                del ref.entries[handle]
            elif handle in ref.entries:
                assert ref.entries.pop(handle)[0] <= now
        elif op == "retoken" and handles:
            handle = handles[int(a) % len(handles)]
            if window.retoken(handle, b):
                ref.entries[handle] = (ref.entries[handle][0], b)
        elif op == "tick":
            now += a
            if a > 10:
                window.expire(now)
                ref.entries = {h: e for h, e in ref.entries.items() if e[0] > now}
        assert window.live(now) == ref.live(now)
        expected = ref.frees_at(now, rpm, tpm, est)
        assert window.frees_at(now, rpm, tpm, est) == pytest.approx(expected)
        alive = sorted(e for e, _ in ref.entries.values() if e > now)
        assert window.oldest_expiry(now) == (alive[0] if alive else None)


def test_many_entries_compact_and_stay_exact():
    window = RollingWindow()
    for i in range(10_000):
        window.add(i / 100 + SPAN, 3)
        if i % 100 == 0:
            window.expire(i / 100)
    now = 10_000 / 100
    window.expire(now)
    assert window.live(now) == (5999, 17_997)  # entries 4001..9999
    assert window.frees_at(now, 5999, 0, 0) == pytest.approx(window.oldest_expiry(now))
    assert window.frees_at(now, 6000, 0, 0) == now
    assert sum(1 for _ in window.entries()) == 5999
