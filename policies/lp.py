"""A small dense linear-program solver, pure Python.

The planner solves a handful of LPs with a few dozen variables per replan
(tiers x models), so a textbook two-phase simplex is plenty -- and it keeps
``policies/`` free of numeric dependencies (no numpy, no scipy), so the same
planner runs inside an actor, a Ray worker and a hypothesis test.

Bland's rule picks the pivots: never the fastest, but it cannot cycle, and at
this size speed does not matter. Values within ``EPS`` of zero are zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["EPS", "LinearProgram", "LpResult", "LpStatus", "solve"]

EPS: Final = 1e-9
_MAX_PIVOTS: Final = 50_000


class LpStatus(StrEnum):
    OPTIMAL = "optimal"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"


@dataclass(frozen=True, slots=True)
class LinearProgram:
    """minimise ``c . x`` subject to ``a_ub x <= b_ub``, ``a_eq x = b_eq``, ``x >= 0``."""

    c: Sequence[float]
    a_ub: Sequence[Sequence[float]] = ()
    b_ub: Sequence[float] = ()
    a_eq: Sequence[Sequence[float]] = ()
    b_eq: Sequence[float] = ()

    def __post_init__(self) -> None:
        n = len(self.c)
        if len(self.a_ub) != len(self.b_ub) or len(self.a_eq) != len(self.b_eq):
            raise ValueError("LinearProgram: each constraint row needs one bound")
        for row in (*self.a_ub, *self.a_eq):
            if len(row) != n:
                raise ValueError(f"LinearProgram: a row has {len(row)} coefficients, not {n}")


@dataclass(frozen=True, slots=True)
class LpResult:
    status: LpStatus
    x: tuple[float, ...] = ()
    objective: float = 0.0
    # Per ``a_ub`` row: ``b_ub - a_ub x`` at the solution (0: the row binds).
    slack: tuple[float, ...] = ()


def solve(lp: LinearProgram) -> LpResult:
    """Solve ``lp`` exactly (up to floating point) with a two-phase simplex."""
    n = len(lp.c)
    rows: list[list[float]] = []
    rhs: list[float] = []
    # Rows are scaled to a largest coefficient of 1: a token row (hundreds per
    # request, bounds of millions) next to a request row would otherwise
    # drown the request row's digits in the tolerances.
    original, lp = lp, _equilibrated(lp)
    # Each row gets a slack (<=) or surplus (>=, after a sign flip); rows whose
    # slack cannot start in the basis get an artificial variable.
    kinds: list[str] = []
    for row, bound in zip(lp.a_ub, lp.b_ub, strict=True):
        if bound >= 0:
            rows.append([float(v) for v in row])
            rhs.append(float(bound))
            kinds.append("slack")
        else:
            rows.append([-float(v) for v in row])
            rhs.append(-float(bound))
            kinds.append("surplus")
    for row, bound in zip(lp.a_eq, lp.b_eq, strict=True):
        sign = 1.0 if bound >= 0 else -1.0
        rows.append([sign * float(v) for v in row])
        rhs.append(sign * float(bound))
        kinds.append("eq")
    m = len(rows)
    n_slack = sum(1 for k in kinds if k != "eq")
    n_art = sum(1 for k in kinds if k != "slack")
    width = n + n_slack + n_art
    table = [[0.0] * (width + 1) for _ in range(m)]
    basis = [0] * m
    slack_col = n
    art_col = n + n_slack
    slack_of_row: list[int | None] = [None] * m
    artificial: list[int] = []
    for i, (row, bound, kind) in enumerate(zip(rows, rhs, kinds, strict=True)):
        table[i][:n] = row
        table[i][width] = bound
        if kind == "slack":
            table[i][slack_col] = 1.0
            slack_of_row[i] = slack_col
            basis[i] = slack_col
            slack_col += 1
        elif kind == "surplus":
            table[i][slack_col] = -1.0
            slack_of_row[i] = slack_col
            slack_col += 1
            table[i][art_col] = 1.0
            basis[i] = art_col
            artificial.append(art_col)
            art_col += 1
        else:
            table[i][art_col] = 1.0
            basis[i] = art_col
            artificial.append(art_col)
            art_col += 1

    if artificial:
        phase1 = [0.0] * width
        for col in artificial:
            phase1[col] = 1.0
        if _simplex(table, basis, phase1, width) is LpStatus.UNBOUNDED:  # pragma: no cover
            return LpResult(LpStatus.INFEASIBLE)
        if _objective(table, basis, phase1, width) > 1e-7 * max(1.0, max(rhs, default=1.0)):
            return LpResult(LpStatus.INFEASIBLE)
        _drive_out(table, basis, set(artificial), n + n_slack, width)
        for i in range(m):
            for col in artificial:
                table[i][col] = 0.0
    cost = [0.0] * width
    cost[:n] = [float(v) for v in lp.c]
    allowed = n + n_slack  # artificials never re-enter
    if _simplex(table, basis, cost, allowed) is LpStatus.UNBOUNDED:
        return LpResult(LpStatus.UNBOUNDED)
    values = [0.0] * width
    for i, col in enumerate(basis):
        values[col] = table[i][width]
    x = tuple(max(0.0, v) if abs(v) > EPS else 0.0 for v in values[:n])
    slack = tuple(
        _ub_slack(original.a_ub[i], original.b_ub[i], x) for i in range(len(original.b_ub))
    )
    return LpResult(LpStatus.OPTIMAL, x, sum(c * v for c, v in zip(lp.c, x, strict=True)), slack)


def _equilibrated(lp: LinearProgram) -> LinearProgram:
    def scale(
        rows: Sequence[Sequence[float]], bounds: Sequence[float]
    ) -> tuple[list[list[float]], list[float]]:
        out_rows, out_bounds = [], []
        for row, bound in zip(rows, bounds, strict=True):
            largest = max((abs(v) for v in row), default=0.0)
            factor = 1.0 / largest if largest > 0 else 1.0
            out_rows.append([v * factor for v in row])
            out_bounds.append(bound * factor)
        return out_rows, out_bounds

    a_ub, b_ub = scale(lp.a_ub, lp.b_ub)
    a_eq, b_eq = scale(lp.a_eq, lp.b_eq)
    return LinearProgram(lp.c, a_ub, b_ub, a_eq, b_eq)


def _ub_slack(row: Sequence[float], bound: float, x: Sequence[float]) -> float:
    return float(bound) - sum(a * v for a, v in zip(row, x, strict=True))


def _objective(table: list[list[float]], basis: list[int], cost: list[float], width: int) -> float:
    return sum(cost[col] * table[i][width] for i, col in enumerate(basis))


def _simplex(
    table: list[list[float]], basis: list[int], cost: list[float], allowed: int
) -> LpStatus:
    """Minimise ``cost`` from the feasible basis in ``table`` (in place).
    Only columns below ``allowed`` may enter."""
    width = len(table[0]) - 1 if table else 0
    for _ in range(_MAX_PIVOTS):
        # Reduced costs: c_j - c_B B^-1 A_j, with the tableau already B^-1 A.
        entering = -1
        for j in range(allowed):
            reduced = cost[j] - sum(cost[col] * table[i][j] for i, col in enumerate(basis))
            if reduced < -EPS:
                entering = j  # Bland: the lowest index that improves
                break
        if entering < 0:
            return LpStatus.OPTIMAL
        leaving = -1
        best = 0.0
        for i, row in enumerate(table):
            a = row[entering]
            if a > EPS:
                ratio = row[width] / a
                if (
                    leaving < 0
                    or ratio < best - EPS
                    or (abs(ratio - best) <= EPS and basis[i] < basis[leaving])
                ):
                    leaving, best = i, ratio
        if leaving < 0:
            return LpStatus.UNBOUNDED
        _pivot(table, basis, leaving, entering)
    raise RuntimeError("simplex did not converge")  # pragma: no cover - Bland's rule terminates


def _pivot(table: list[list[float]], basis: list[int], row: int, col: int) -> None:
    pivot_row = table[row]
    factor = pivot_row[col]
    for j in range(len(pivot_row)):
        pivot_row[j] /= factor
    for i, other in enumerate(table):
        if i == row:
            continue
        a = other[col]
        if abs(a) > EPS:
            for j in range(len(other)):
                other[j] -= a * pivot_row[j]
        other[col] = 0.0 if i != row else other[col]
    basis[row] = col


def _drive_out(
    table: list[list[float]], basis: list[int], artificial: set[int], real: int, width: int
) -> None:
    """Pivot artificial variables (at zero) out of the basis where a real
    column can replace them; a row with none is redundant and stays inert."""
    for i, col in enumerate(basis):
        if col not in artificial:
            continue
        for j in range(real):
            if abs(table[i][j]) > EPS:
                _pivot(table, basis, i, j)
                break
