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


def check_rates(faults: Iterable[F], rate: Callable[[F], float], name: Callable[[F], str]) -> None:
    """Refuse rates outside [0, 1] or summing to more than 1, naming the fault."""
    total = 0.0
    for fault in faults:
        value = rate(fault)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"fault rate {name(fault)} must be in [0, 1], got {value}")
        total += value
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault rates must sum to <= 1, got {total}")
