"""One seeded draw among mutually exclusive faults, shared by the fakes."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TypeVar

F = TypeVar("F")


def draw_fault(rng: random.Random, faults: Iterable[F], rate: Callable[[F], float], none: F) -> F:
    """Pick one fault with probability ``rate(fault)`` each (they sum to at
    most 1), or ``none`` with the remaining probability."""
    u = rng.random()
    for fault in faults:
        u -= rate(fault)
        if u < 0:
            return fault
    return none
