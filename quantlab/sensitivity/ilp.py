"""Bit allocation as an integer linear program (HAWQ-V3), solved with scipy.optimize.milp.

One binary x[l, b] per layer l and candidate bit-width b, with sum_b x[l, b] = 1:

    minimise   sum_{l,b} x[l, b] sensitivity[l][b]
    subject to sum_{l,b} x[l, b] size[l][b] <= budget
               x[l, b] = 1 for fixed layers' bits; x[l, b] = x[m, b] for tied layers.
"""
from __future__ import annotations

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
    """The optimal allocation; ValueError naming the budget when none fits."""
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
    # the exact optimum: HiGHS stops within a 1e-4 relative gap by default, which lets a
    # worse allocation through when sensitivities sit on a large common offset
    result = milp(cost, constraints=LinearConstraint(np.array(rows), low, high),
                  integrality=np.ones(n), bounds=Bounds(lower, np.ones(n)), options={"mip_rel_gap": 0.0})
    if not result.success:
        raise ValueError(f"no bit allocation fits the budget {problem.budget:g} ({result.message})")
    chosen = {layer: b for (layer, b), x in zip(names, result.x) if x > 0.5}
    size = sum(problem.size[layer][b] for layer, b in chosen.items())
    return Allocation(chosen, float(cost @ np.round(result.x)), size)


def average_bits(sensitivity: dict[str, dict[int, float]], counts: dict[str, int], target: float,
                 fixed: dict[str, int] | None = None) -> Allocation:
    """Minimum total sensitivity with the average weight precision over all weight elements
    at most `target`: sum_l n_l b_l <= target x sum_l n_l (papers.md C). The candidate bits
    of each layer (e.g. 3..6) are the keys of its sensitivity."""
    size = {layer: {b: float(counts[layer] * b) for b in bits} for layer, bits in sensitivity.items()}
    return solve(Problem(sensitivity, size, target * sum(counts[layer] for layer in sensitivity), fixed or {}))
