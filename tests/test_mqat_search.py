"""MQAT searches on stub evaluators whose answers are known."""
import itertools

import pytest

from quantlab.mqat.runner import Candidate, cached
from quantlab.mqat.search import bit_search, exhaustive_flow, model_size, module_cube, plan_bits, subsets
from quantlab.quant.layers import FLOAT_BITS as FLOAT
from quantlab.records import Ledger

MODULES = ["backbone", "fpn", "head"]
#: the MQAT paper's T-A2 (WDR, ADI-0.1d): (H, F, B) bits -> metric
T_A2 = {(32, 32, 32): 78.8, (2, 32, 32): 69.1, (32, 2, 32): 83.8, (32, 32, 2): 67.8, (2, 2, 32): 70.0,
        (2, 32, 2): 56.3, (32, 2, 2): 69.4, (2, 2, 2): 45.1}


def table_run(bits, order):
    return {"metric": T_A2[(bits["head"], bits["fpn"], bits["backbone"])]}


def test_subsets_are_the_2_to_the_k_minus_1_non_empty_ones():
    found = subsets(MODULES)
    assert len(found) == 7 and len(set(found)) == 7 and all(found)
    assert found[:3] == [("backbone",), ("fpn",), ("head",)]


def test_module_cube_and_ranking_reproduce_the_papers_reading():
    cube = module_cube(MODULES, 78.8, table_run)
    assert len(cube.cube) == 7
    assert {tuple(r["bits"][m] for m in ("head", "fpn", "backbone")): r["metric"] for r in cube.cube} == \
        {k: v for k, v in T_A2.items() if k != (32, 32, 32)}
    assert cube.singles == pytest.approx({"fpn": 5.0, "head": -9.7, "backbone": -11.0})
    assert cube.ranking == ["fpn", "head", "backbone"]  # F first, as in the paper


def test_exhaustive_flow_finds_the_best_of_all_orders():
    # a made-up order effect: quantizing a module late costs less, weighted per module
    weight = {"backbone": 3.0, "fpn": 1.0, "head": 2.0}
    calls = []

    def run(bits, order):
        calls.append(tuple(order))
        return {"metric": 100 - sum(weight[m] * (2 - i) for i, m in enumerate(order))}

    best, evidence = exhaustive_flow(MODULES, run)
    assert len(evidence) == 6 and len(set(calls)) == 6
    assert best == ["fpn", "head", "backbone"]  # the heaviest penalty is quantized last


WEIGHTS = {"backbone": 1000, "fpn": 200, "head": 300}
REST = 20


def toy_metric(bits):
    """Monotone in every module's bits; the head is the most sensitive."""
    cost = {"backbone": {2: 6, 3: 3, 4: 1, 8: 0}, "fpn": {2: 0, 3: 0, 4: 0, 8: 0},
            "head": {2: 9, 3: 5, 4: 2, 8: 0}}
    return {"metric": 80 - sum(cost[m][b] for m, b in bits.items())}


@pytest.mark.parametrize("compression", [4.0, 6.0, 9.0])
def test_bit_search_finds_the_brute_force_optimum_with_fewer_runs(compression):
    grid = [2, 3, 4, 8]
    budget = model_size({m: FLOAT for m in MODULES}, WEIGHTS, REST) / compression
    feasible = [dict(zip(MODULES, c)) for c in itertools.product(grid, repeat=3)
                if model_size(dict(zip(MODULES, c)), WEIGHTS, REST) <= budget]
    best_metric = max(toy_metric(b)["metric"] for b in feasible)
    cube = module_cube(MODULES, 80.0, lambda bits, order: toy_metric({m: (b if b != FLOAT else 8) for m, b in bits.items()}))
    plan = plan_bits(MODULES, grid, WEIGHTS, REST, compression, cube)
    assert plan.fixed == {"fpn": 2}  # the probe showed 2-bit FPN costs nothing
    assert plan.full_grid == 64 and len(plan.assignments) < len(feasible) < 64
    bits, evidence = bit_search(plan, ["fpn", "head", "backbone"], lambda b, o: toy_metric(b))
    assert toy_metric(bits)["metric"] == best_metric
    assert model_size(bits, WEIGHTS, REST) <= budget


def test_an_impossible_budget_plans_nothing():
    # 100x with 4 and 8 bits: no assignment fits (--mode mqat then names mqat.min_compression)
    plan = plan_bits(MODULES, [4, 8], WEIGHTS, REST, 100.0)
    assert plan.assignments == [] and plan.full_grid == 8


def test_an_interrupted_search_resumes_without_rerunning_finished_candidates(tmp_path):
    calls = []

    def run(bits, order):
        calls.append(Candidate.of(bits, order).key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return table_run(bits, order)

    with pytest.raises(KeyboardInterrupt):
        module_cube(MODULES, 78.8, cached(Ledger(tmp_path / "ledger.json"), run))
    assert len(Ledger(tmp_path / "ledger.json").entries) == 2
    cube = module_cube(MODULES, 78.8, cached(Ledger(tmp_path / "ledger.json"), run))
    assert len(calls) == 3 + 5 and len(set(calls)) == 7  # only the interrupted one ran twice
    assert cube.ranking == ["fpn", "head", "backbone"]


def test_a_candidate_names_its_ledger_entry_and_its_folder():
    """The key and folder of existing experiments (a resumed search finds its children by them)."""
    from quantlab.mqat.runner import Candidate
    one = Candidate.of({"head": 32, "backbone": 32, "fpn": 2}, ["fpn", "head", "backbone"], "lsq")
    assert one.key == "lsq:backbone=32,fpn=2,head=32|fpn>head>backbone"
    assert one.folder == "lsq_backbone32_fpn2_head32__fpn-head-backbone"
    plain = Candidate.of({"fpn": 8, "backbone": 4}, None)
    assert (plain.key, plain.folder) == ("backbone=4,fpn=8|", "backbone4_fpn8__")
    assert Candidate.of({"fpn": 8, "backbone": 4}, None) == plain and len({plain, one}) == 2  # a value
