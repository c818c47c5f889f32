"""Bit allocation as an integer linear program (HAWQ-V3), solved with scipy.optimize.milp.

One binary x[l, b] per layer l and candidate bit-width b, with sum_b x[l, b] = 1:

    minimise   sum_{l,b} x[l, b] sensitivity[l][b]
    subject to sum_{l,b} x[l, b] size[l][b] <= budget
               x[l, b] = 1 for fixed layers' bits; x[l, b] = x[m, b] for tied layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


@dataclass
class Allocation:
    bits: dict[str, int]
    objective: float
    size: float


@dataclass
class Problem:
    sensitivity: dict[str, dict[int, float]]   # layer -> bits -> sensitivity
    size: dict[str, dict[int, float]]          # layer -> bits -> size (e.g. bits of storage)
    budget: float
    fixed: dict[str, int] = field(default_factory=dict)
    tied: list[list[str]] = field(default_factory=list)

    def variables(self) -> list[tuple[str, int]]:
        return [(layer, b) for layer in self.sensitivity for b in sorted(self.sensitivity[layer])]


def solve(problem: Problem) -> Allocation:
    """The optimal allocation whose size is within the budget (checked, not taken from the
    solver's tolerance); ValueError naming the budget when none fits."""
    names = problem.variables()
    index = {v: i for i, v in enumerate(names)}
    n = len(names)
    cost = np.array([problem.sensitivity[layer][b] for layer, b in names], dtype=float)
    rows, low, high = [], [], []

    def add(row: np.ndarray, lo: float, hi: float) -> None:
        rows.append(row)
        low.append(lo)
        high.append(hi)

    for layer in problem.sensitivity:
        row = np.zeros(n)
        for b in problem.sensitivity[layer]:
            row[index[(layer, b)]] = 1
        add(row, 1, 1)
    add(np.array([problem.size[layer][b] for layer, b in names], dtype=float), -np.inf, problem.budget)
    lower = np.zeros(n)
    for layer, bits in problem.fixed.items():
        if (layer, bits) not in index:
            raise ValueError(f"fixed layer {layer}: {bits} bits is not one of its candidates")
        lower[index[(layer, bits)]] = 1
    for group in problem.tied:
        first = group[0]
        for other in group[1:]:
            if set(problem.sensitivity[other]) != set(problem.sensitivity[first]):
                raise ValueError(f"tied layers {first} and {other} have different candidate bits")
            for b in problem.sensitivity[first]:
                row = np.zeros(n)
                row[index[(first, b)]], row[index[(other, b)]] = 1, -1
                add(row, 0, 0)
    # HiGHS accepts a solution whose size row exceeds its limit by the feasibility
    # tolerance (scaled: a fraction of a bit on a model of 1e8 bits), so the returned size
    # is checked against the budget. Sizes that are whole numbers (weights x bits) fit the
    # budget iff they fit its floor; while a solution is over, the limit moves below the
    # budget by twice the largest overshoot seen, and the ILP is solved again
    integral = all(float(v).is_integer() for sizes in problem.size.values() for v in sizes.values())
    limit, overshoot = (math.floor(problem.budget) if integral else problem.budget), 0.0
    for attempt in range(1, TIGHTENINGS + 1):
        high[-1] = limit
        chosen, x = _solve(cost, rows, low, high, lower, names, problem.budget)
        size = sum(problem.size[layer][b] for layer, b in chosen.items())
        if size <= problem.budget:
            return Allocation(chosen, float(cost @ x), size)
        overshoot = max(overshoot, size - limit)
        limit = problem.budget - 2 * attempt * overshoot
    raise ValueError(f"no bit allocation fits the budget {problem.budget:g} (the solver's best stays "
                     f"{size - problem.budget:g} over it)")


#: re-solves with a tighter budget before an allocation over it is given up
TIGHTENINGS = 8


def _solve(cost: np.ndarray, rows: list, low: list, high: list, lower: np.ndarray, names: list,
           budget: float) -> tuple[dict[str, int], np.ndarray]:
    """One HiGHS solve: the chosen bits per layer and the rounded 0/1 vector."""
    # the exact optimum: HiGHS stops within a 1e-4 relative gap by default, which lets a
    # worse allocation through when sensitivities sit on a large common offset
    result = milp(cost, constraints=LinearConstraint(np.array(rows), low, high), integrality=np.ones(len(cost)),
                  bounds=Bounds(lower, np.ones(len(cost))), options={"mip_rel_gap": 0.0})
    if not result.success:
        raise ValueError(f"no bit allocation fits the budget {budget:g} ({result.message})")
    x = np.round(result.x)
    return {layer: b for (layer, b), v in zip(names, x) if v > 0.5}, x


def average_bits(sensitivity: dict[str, dict[int, float]], counts: dict[str, int], target: float,
                 fixed: dict[str, int] | None = None) -> Allocation:
    """Minimum total sensitivity with the average weight precision over all weight elements
    at most `target`: sum_l n_l b_l <= target x sum_l n_l (Huang et al., Output Sensitivity-Aware DETR Quantization, eq. 2-3). The candidate bits
    of each layer (e.g. 3..6) are the keys of its sensitivity."""
    size = {layer: {b: float(counts[layer] * b) for b in bits} for layer, bits in sensitivity.items()}
    return solve(Problem(sensitivity, size, target * sum(counts[layer] for layer in sensitivity), fixed or {}))
