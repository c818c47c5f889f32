"""MQAT's searches over modules: the module cube, the quantization flow, the bit search.

All of them drive a `run(bits, order)` callback that quantizes the modules with bits below
FLOAT_BITS (in `order` when given, one stage each), fine-tunes, evaluates and returns a
dict with the target `metric` (higher is better); FLOAT_BITS means a module stays float.
What `run` costs is a full QAT candidate, so every search here says how many runs it needs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

from quantlab.quant.layers import FLOAT_BITS

Run = Callable[[dict[str, int], "list[str] | None"], dict[str, Any]]


@dataclass
class Cube:
    float_metric: float
    cube: list[dict[str, Any]]          # one row per non-empty subset: bits, metric, delta, evaluation
    singles: dict[str, float]           # metric change of each module quantized alone
    ranking: list[str]                  # single modules, least harmful first


def subsets(modules: list[str]) -> list[tuple[str, ...]]:
    """The 2^K - 1 non-empty subsets, by size then in module order."""
    return [c for k in range(1, len(modules) + 1) for c in itertools.combinations(modules, k)]


def module_cube(modules: list[str], float_metric: float, run: Run, probe_bits: int = 2) -> Cube:
    """Quantize every subset of modules at `probe_bits` (the rest float), fine-tune, evaluate;
    rank single modules by the change of the metric (largest gain / smallest loss first)."""
    cube = []
    for subset in subsets(modules):
        bits = {m: probe_bits if m in subset else FLOAT_BITS for m in modules}
        found = run(bits, None)
        cube.append({"bits": bits, "metric": found["metric"], "delta": found["metric"] - float_metric,
                     "evaluation": found.get("evaluation")})
    singles = {}
    for row in cube:
        quantized = [m for m, b in row["bits"].items() if b != FLOAT_BITS]
        if len(quantized) == 1:
            singles[quantized[0]] = row["delta"]
    ranking = sorted(modules, key=lambda m: (-singles[m], modules.index(m)))
    return Cube(float_metric, cube, singles, ranking)


def exhaustive_flow(modules: list[str], run: Run, probe_bits: int = 2) -> tuple[list[str], list[dict]]:
    """Every one of the K! orders, all modules at `probe_bits`: (best order, evidence)."""
    evidence = []
    for order in itertools.permutations(modules):
        bits = {m: probe_bits for m in modules}
        evidence.append({"order": list(order), "metric": run(bits, list(order))["metric"]})
    best = max(evidence, key=lambda e: e["metric"])
    return best["order"], evidence


def model_size(bits: dict[str, int], weights: dict[str, int], rest: int) -> float:
    """Bits of storage: each module's weight count at its bits, everything else float."""
    return sum(weights[m] * bits[m] for m in bits) + rest * FLOAT_BITS


@dataclass
class BitPlan:
    assignments: list[dict[str, int]]
    full_grid: int
    fixed: dict[str, int]               # modules the cube pinned to the lowest bits


def plan_bits(modules: list[str], grid: list[int], weights: dict[str, int], rest: int,
              min_compression: float, cube: Cube | None = None, tolerance: float = 0.0) -> BitPlan:
    """Candidate bit assignments worth a QAT run under a compression budget.

    Pruning, both from how quantization behaves: (1) a module whose single-module probe
    (at the grid's lowest bits) costs at most `tolerance` of the metric is pinned to those
    bits; (2) accuracy does not fall when a module gets more bits, so only *maximal*
    assignments are kept: within budget, but over it if any module moved one grid step up.
    """
    grid = sorted(grid)
    fixed = {}
    if cube is not None:
        fixed = {m: grid[0] for m in modules if cube.singles[m] >= -tolerance}
    float_size = model_size({m: FLOAT_BITS for m in modules}, weights, rest)
    budget = float_size / min_compression
    free = [m for m in modules if m not in fixed]
    assignments = []
    for combo in itertools.product(grid, repeat=len(free)):
        bits = {**fixed, **dict(zip(free, combo))}
        if model_size(bits, weights, rest) > budget:
            continue
        maximal = True
        for m in free:
            position = grid.index(bits[m])
            if position + 1 < len(grid):
                up = {**bits, m: grid[position + 1]}
                if model_size(up, weights, rest) <= budget:
                    maximal = False
                    break
        if maximal:
            assignments.append({m: bits[m] for m in modules})
    return BitPlan(assignments, len(grid) ** len(modules), fixed)


def bit_search(plan: BitPlan, order: list[str], run: Run) -> tuple[dict[str, int], list[dict]]:
    """Run every planned assignment in the flow `order`: (best bits, evidence)."""
    evidence = [{"bits": bits, "metric": run(bits, order)["metric"]} for bits in plan.assignments]
    best = max(evidence, key=lambda e: e["metric"])
    return best["bits"], evidence
