"""Hutchinson traces against the exact Hessian of a tiny model; the bit-allocation ILP
against brute force on small instances; HAWQ sensitivities worked by hand."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from quantlab.sensitivity.hessian import block_quadratic_forms, hutchinson_samples, hutchinson_traces
from quantlab.sensitivity.ilp import Problem, solve
from quantlab.sensitivity.omega import omega


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    x, y = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    return model, lambda: ((model(x) - y) ** 2).mean(), x, y


def exact_block_traces(model, x, y) -> dict[str, float]:
    """tr of each weight's diagonal block of the full Hessian over both weight matrices."""
    names = ["0.weight", "2.weight"]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss_of(vector):
        parts, start = {}, 0
        for n, shape in zip(names, shapes):
            parts[n] = vector[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        out = torch.func.functional_call(model, {**{k: v.detach() for k, v in params.items()}, **parts}, (x,))
        return ((out - y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss_of, flat)
    traces, start = {}, 0
    for n, shape in zip(names, shapes):
        block = hessian[start:start + shape.numel(), start:start + shape.numel()]
        traces[n.split(".")[0]] = float(block.trace())
        start += shape.numel()
    return traces, hessian


def test_hutchinson_over_all_sign_vectors_is_the_exact_block_trace():
    model, loss, x, y = tiny()
    exact, _ = exact_block_traces(model, x, y)
    weights = {"0": model[0].weight, "2": model[2].weight}
    sums = {"0": 0.0, "2": 0.0}
    signs = list(itertools.product([-1.0, 1.0], repeat=6))  # all 2^6 Rademacher vectors
    for s in signs:
        v = torch.tensor(s, dtype=torch.float64)
        vectors = {"0": v[:4].reshape(2, 2), "2": v[4:].reshape(1, 2)}
        for n, value in block_quadratic_forms(loss(), weights, vectors).items():
            sums[n] += value
    for n in weights:
        assert sums[n] / len(signs) == pytest.approx(exact[n], rel=1e-10)


def test_hutchinson_sampling_converges_within_its_standard_error():
    model, loss, x, y = tiny()
    exact, hessian = exact_block_traces(model, x, y)
    weights = {"0": model[0].weight, "2": model[2].weight}
    samples = 2000
    estimate = hutchinson_traces(weights, [loss], samples, seed=1)
    for n, (a, b) in {"0": (0, 4), "2": (4, 6)}.items():
        block = hessian[a:b, a:b]
        off = (block ** 2).sum() - (block.diagonal() ** 2).sum()
        stderr = float((2 * off / samples) ** 0.5)   # Var(v^T A v) = 2 sum_{i != j} A_ij^2
        assert abs(estimate[n] - exact[n]) < 4 * stderr + 1e-12


def brute_force(problem: Problem):
    layers = list(problem.sensitivity)
    best = None
    for combo in itertools.product(*[sorted(problem.sensitivity[l]) for l in layers]):
        bits = dict(zip(layers, combo))
        if any(bits[l] != b for l, b in problem.fixed.items()):
            continue
        if any(len({bits[l] for l in group}) > 1 for group in problem.tied):
            continue
        size = sum(problem.size[l][bits[l]] for l in layers)
        if size > problem.budget + 1e-9:
            continue
        cost = sum(problem.sensitivity[l][bits[l]] for l in layers)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, bits)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_ilp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    layers = [f"l{i}" for i in range(5)]
    counts = {l: int(rng.integers(10, 200)) for l in layers}
    sens = {l: {b: float(rng.random() * 10 / 2 ** b) for b in (2, 4, 8)} for l in layers}
    size = {l: {b: float(counts[l] * b) for b in (2, 4, 8)} for l in layers}
    full = sum(counts.values()) * 8
    for fraction, fixed, tied in ((0.5, {}, []), (0.35, {"l0": 8}, []), (0.6, {}, [["l1", "l2"]]),
                                  (0.3, {"l3": 2}, [["l0", "l4"]])):
        problem = Problem(sens, size, fraction * full, fixed, tied)
        expected = brute_force(problem)
        if expected is None:
            with pytest.raises(ValueError, match="no bit allocation fits the budget"):
                solve(problem)
            continue
        got = solve(problem)
        assert got.objective == pytest.approx(expected[0], rel=1e-9)
        assert got.size <= problem.budget + 1e-9
        assert all(got.bits[l] == b for l, b in fixed.items())
        assert all(len({got.bits[l] for l in g}) == 1 for g in tied)


def test_ilp_is_exact_when_sensitivities_share_a_large_offset():
    """Near-ties on a common offset of 1000: within HiGHS's default 1e-4 relative gap a
    worse allocation (0.05 worse in 5000) would count as optimal; the solver must not stop
    there (seen in about one instance in six before the fix)."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        layers = [f"l{i}" for i in range(5)]
        sens = {l: {b: 1000.0 + float(rng.random()) * 0.5 * (8 - b) for b in (2, 4, 8)} for l in layers}
        counts = {l: int(rng.integers(1, 50)) for l in layers}
        size = {l: {b: float(counts[l] * b) for b in (2, 4, 8)} for l in layers}
        problem = Problem(sens, size, float(sum(counts.values()) * rng.uniform(3, 6)))
        expected = brute_force(problem)
        if expected is not None:
            assert solve(problem).objective == pytest.approx(expected[0], rel=1e-12, abs=1e-9)


def test_omega_by_hand():
    w = torch.tensor([[0.5, -1.0], [0.25, 0.75]])  # max|W| = 1
    sens = omega({"a": [w]}, {"a": 8.0}, [2, 3])
    # mean trace 8 / 4 = 2. 2 bits: step 1, W -> 0, -1, 0, 1 (0.5 rounds to even): squared
    # errors 0.25 + 0 + 0.0625 + 0.0625 = 0.375. 3 bits: step 1/3, W/step = 1.5, -3, 0.75,
    # 2.25 -> 2, -3, 1, 2: errors 1/6, 0, 1/12, 1/12, squared sum 1/36 + 2/144
    assert sens["a"][2] == pytest.approx(2 * 0.375) and sens["a"][3] == pytest.approx(2 * (1 / 36 + 2 / 144))
    # a layer of two tensors: its trace and count cover both, the errors add
    assert omega({"a": [w, w]}, {"a": 8.0}, [2])["a"][2] == pytest.approx(8 / 8 * 2 * 0.375)
    # against the 3-bit reference weights (output_quant), 3 bits costs nothing
    assert omega({"a": [w]}, {"a": 8.0}, [3], reference_bits=3)["a"][3] == 0


@pytest.mark.parametrize("target", [4.0, 5.0, 5.5])
def test_average_bit_allocation_keeps_the_range_and_the_average(target):
    from quantlab.sensitivity.ilp import average_bits
    rng = np.random.default_rng(int(target * 10))
    counts = {f"l{i}": int(rng.integers(10, 1000)) for i in range(5)}
    bits = [3, 4, 5, 6]
    sens = {l: {b: float(rng.uniform(0.5, 2.0)) * 4.0 ** -b for b in bits} for l in counts}
    alloc = average_bits(sens, counts, target)
    assert set(alloc.bits.values()) <= set(bits)
    total = sum(counts.values())
    assert sum(counts[l] * b for l, b in alloc.bits.items()) <= target * total + 1e-6
    best = min((sum(sens[l][b] for l, b in zip(counts, combo)), combo)
               for combo in itertools.product(bits, repeat=len(counts))
               if sum(counts[l] * b for l, b in zip(counts, combo)) <= target * total)
    assert alloc.objective == pytest.approx(best[0])


def test_an_allocation_is_never_over_its_budget_by_the_solvers_tolerance():
    """A budget a fraction of a bit below the best allocation's size: HiGHS took that
    allocation as feasible within its tolerance (99 of 100 such cases before the check, up
    to 0.3 bits over). Now the size is checked and the ILP solved again below the budget."""
    for seed in range(30):
        rng = np.random.default_rng(seed)
        counts = {f"l{i}": int(rng.integers(100_000, 3_000_000)) for i in range(20)}
        sens = {l: {b: float(rng.uniform(1, 2) * 4.0 ** -b) for b in (2, 4, 8)} for l in counts}
        size = {l: {b: float(c * b) for b in (2, 4, 8)} for l, c in counts.items()}
        best = solve(Problem(sens, size, 4.0 * sum(counts.values())))
        budget = best.size - rng.uniform(0.01, 0.3)
        got = solve(Problem(sens, size, budget))
        assert got.size <= budget and got.size == sum(size[l][b] for l, b in got.bits.items())


@pytest.mark.parametrize("seed", range(4))
def test_a_budget_just_below_a_reachable_size_still_gets_the_exact_optimum(seed):
    """Brute force, exactly within the budget, where the budget sits 0.3 bits below the
    sizes of allocations that would be better."""
    rng = np.random.default_rng(100 + seed)
    layers = [f"l{i}" for i in range(5)]
    counts = {l: int(rng.integers(50_000, 500_000)) for l in layers}
    sens = {l: {b: float(rng.random() * 10 / 2 ** b) for b in (2, 4, 8)} for l in layers}
    size = {l: {b: float(counts[l] * b) for b in (2, 4, 8)} for l in layers}
    reachable = sorted({sum(size[l][b] for l, b in zip(layers, combo))
                        for combo in itertools.product((2, 4, 8), repeat=len(layers))})
    for budget in (reachable[len(reachable) // 3] - 0.3, reachable[len(reachable) // 2] - 0.3):
        problem = Problem(sens, size, budget)
        cost, bits = min((sum(sens[l][b] for l, b in zip(layers, combo)), combo)
                         for combo in itertools.product((2, 4, 8), repeat=len(layers))
                         if sum(size[l][b] for l, b in zip(layers, combo)) <= budget)
        got = solve(problem)
        assert got.size <= budget and got.objective == pytest.approx(cost, rel=1e-12)


def test_a_trace_carries_its_standard_error_pooled_over_ranks():
    """Two ranks' samples pooled from their averaged moments equal the statistics of all
    samples at once (numpy's mean and standard error of the mean)."""
    from quantlab.sensitivity.traces import moments, pooled
    rank0 = {"a": np.array([1.0, 3.0, -2.0]), "b": np.array([5.0, 5.0, 5.0])}
    rank1 = {"a": np.array([0.5, 4.0, 1.5]), "b": np.array([5.0, 5.0, 5.0])}
    averaged = {k: (moments(rank0)[k] + moments(rank1)[k]) / 2 for k in moments(rank0)}
    traces = pooled(averaged, ranks=2)
    every = np.concatenate([rank0["a"], rank1["a"]])
    assert traces["a"].value == pytest.approx(every.mean()) and traces["a"].samples == 6
    assert traces["a"].se == pytest.approx(every.std(ddof=1) / np.sqrt(6))
    assert traces["b"].value == 5.0 and traces["b"].se == 0.0 and traces["b"].significant
    assert not traces["a"].significant  # 1.33 +- 0.84: |mean| < 1.96 standard errors


def test_a_negative_trace_sends_its_layer_to_the_lowest_bits_only_when_taken_raw():
    """Layers a (trace -4) and b (trace 1), each 100 weights, errors 4^-b per weight
    (so Omega = trace / 100 x 100 x 4^-b), 6 average bits over bits 4 / 8. Raw, a's
    negative trace rewards error: a gets 4 bits and b 8. With |trace| (abs), a is the more
    sensitive layer and gets the 8 bits; clamped, a counts as insensitive: 4 bits."""
    from quantlab.sensitivity.ilp import average_bits
    from quantlab.sensitivity.traces import Trace, summary, used
    traces = {"a": Trace(-4.0, 0.5, 10), "b": Trace(1.0, 0.1, 10)}
    counts = {"a": 100, "b": 100}

    def allocate(rule):
        taken = used(traces, rule)
        sens = {k: {b: taken[k] * 4.0 ** -b for b in (4, 8)} for k in traces}
        return average_bits(sens, counts, 6.0).bits
    assert allocate("raw") == {"a": 4, "b": 8} and allocate("abs") == {"a": 8, "b": 4}
    assert allocate("clamp") == {"a": 4, "b": 8}
    assert used(traces, "clamp") == {"a": 0.0, "b": 1.0} and used(traces, "abs") == {"a": 4.0, "b": 1.0}
    assert summary(traces, "abs", "ptq.negative_traces") == (
        "1 of 2 traces negative, 0 not significant (|trace| < 1.96 standard errors); ptq.negative_traces: abs "
        "uses |trace|")
    assert summary({"b": traces["b"]}, "abs", "k") is None


def test_hutchinson_samples_give_one_value_per_batch_and_their_mean_is_the_trace():
    model, loss, x, y = tiny()
    weights = {"0": model[0].weight, "2": model[2].weight}
    found = hutchinson_samples(weights, [loss, loss, loss], 4, seed=2)
    assert all(v.shape == (3,) for v in found.values())  # three batches: one mean of 4 vectors each
    assert hutchinson_traces(weights, [loss, loss, loss], 4, seed=2) == {k: float(v.mean()) for k, v in found.items()}
    single = hutchinson_samples(weights, [loss], 5, seed=2)
    assert all(v.shape == (5,) for v in single.values())  # one batch: its vectors are the samples
