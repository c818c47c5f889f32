"""The MQAT modes: evaluate the float start, then the searches, each candidate a child run."""
from __future__ import annotations

from pathlib import Path

import torch

from quantlab.engine import distributed as dist
from quantlab.engine.children import evaluate_child
from quantlab.engine.errors import ConfigError
from quantlab.engine.logbook import Logbook
from quantlab.engine.task import Task
from quantlab.files import write_text_atomic
from quantlab.mqat.ledger import Ledger, candidate_key
from quantlab.mqat.runner import FINETUNE, StagedRuns
from quantlab.mqat.search import (FLOAT, Sensitivity, bit_search, exhaustive_flow, model_size, plan_bits,
                                  sensitivity)
from quantlab.mqat.tables import NAMES, write_tables
from quantlab.sensitivity.pipeline import run_hawq
from quantlab.quant.editing import candidates, pattern_of, weight_tensors


def float_metric(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
                 init: Path, ledger: Ledger) -> float:
    """The float checkpoint's metric on the evaluation split (recorded like a candidate)."""
    def evaluate(bits: dict[str, int], order: list[str] | None) -> dict:
        metrics = evaluate_child(task, cfg, world, logbook.child("float"), device, init, [], "float")
        return {"metric": metrics[task.best_metric], "metrics": metrics}
    return ledger.cached(evaluate)({m: FLOAT for m in task.groups}, None)["metric"]


def cube_table(sens: Sensitivity, modules: list[str], metric: str) -> str:
    head = " | ".join(m for m in modules)
    lines = [f"| {head} | {metric} | change |", "|" + "---|" * (len(modules) + 2),
             f"| {' | '.join(str(FLOAT) for _ in modules)} | {sens.float_metric:.2f} | |"]
    for row in sens.cube:
        bits = " | ".join(str(row["bits"][m]) for m in modules)
        lines.append(f"| {bits} | {row['metric']:.2f} | {row['delta']:+.2f} |")
    return "\n".join(lines)


def _searches(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
              init: Path) -> tuple[Ledger, StagedRuns, float]:
    ledger = Ledger(logbook.root / "mqat" / "ledger.json", writer=world.is_main)
    start = float_metric(task, cfg, world, logbook, device, init, ledger)
    return ledger, StagedRuns(task, cfg, world, logbook, device, init), start


def run_sensitivity(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
                    init: Path) -> Sensitivity:
    """The module cube at `mqat.probe_bits` and the single-module ranking, written to
    `mqat/sensitivity.json` and `mqat/cube.md`; finished probes are never re-run."""
    return _sensitivity(task, cfg, world, logbook, *_searches(task, cfg, world, logbook, device, init))


def _sensitivity(task: Task, cfg: dict, world: dist.World, logbook: Logbook, ledger: Ledger,
                 runs: StagedRuns, start: float) -> Sensitivity:
    modules = list(task.groups)
    sens = sensitivity(modules, start, ledger.cached(runs), cfg["mqat"]["probe_bits"])
    table = cube_table(sens, modules, task.best_metric)
    logbook.write_json("mqat/sensitivity.json", {"float_metric": sens.float_metric, "cube": sens.cube,
                                                 "singles": sens.singles, "ranking": sens.ranking})
    if world.is_main:
        write_text_atomic(logbook.root / "mqat" / "cube.md", table + "\n")
        print(f"\nmodule sensitivity at {cfg['mqat']['probe_bits']} bits:\n{table}\n"
              f"flow by sensitivity (least harmful first): {' -> '.join(sens.ranking)}", flush=True)
    return sens


def module_weights(model: torch.nn.Module, cfg: dict, groups: dict[str, str]) -> tuple[dict[str, int], int]:
    """Weights each module would quantize (its Conv/Linear/attention weights, exclusions
    left out) and the count of every other parameter (kept float)."""
    layers = candidates(model, cfg["quantize"]["exclude"], groups)
    counts = {}
    for module in groups:
        regex = pattern_of(module, groups)
        counts[module] = sum(t.numel() for n, m in layers.items() if regex.fullmatch(n) for t in weight_tensors(m))
    rest = sum(p.numel() for p in model.parameters()) - sum(counts.values())
    return counts, rest


def run_mqat(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
             init: Path) -> dict:
    """Sensitivity cube -> flow -> bit plan -> staged QAT of every planned candidate in the
    flow; the best candidate is the MQAT result (`mqat/result.json`)."""
    settings = cfg["mqat"]
    ledger, runs, start = _searches(task, cfg, world, logbook, device, init)
    sens = _sensitivity(task, cfg, world, logbook, ledger, runs, start)
    run = ledger.cached(runs)
    modules = list(task.groups)
    if settings["flow"] == "exhaustive":
        order, flow_evidence = exhaustive_flow(modules, run, settings["probe_bits"])
    else:
        order, flow_evidence = sens.ranking, [{"ranking": sens.singles}]
    weights, rest = module_weights(task.build_network(), cfg, task.groups)
    plan = plan_bits(modules, settings["grid"], weights, rest, settings["min_compression"], sens,
                     settings["tolerance"])
    logbook.write_json("mqat/flow.json", {"order": order, "mode": settings["flow"], "evidence": flow_evidence})
    logbook.write_json("mqat/bit_plan.json", {"candidates": plan.candidates, "full_grid": plan.full_grid,
                                              "fixed": plan.fixed, "weights": weights, "rest": rest})
    if world.is_main:
        print(f"flow {' -> '.join(order)}; bit search: {len(plan.candidates)} candidate runs instead of "
              f"the full grid's {plan.full_grid} (pinned to the lowest bits: {plan.fixed or 'none'})", flush=True)
    bits, evidence = bit_search(plan, order, run)
    float_size = model_size({m: FLOAT for m in modules}, weights, rest)
    best = ledger.entries[candidate_key(bits, order)]
    floats = ledger.entries[candidate_key({m: FLOAT for m in modules}, None)]
    result = {"bits": bits, "order": order, "metric": best["metric"], "metrics": best.get("metrics", {}),
              "float_metric": sens.float_metric, "float_metrics": floats.get("metrics", {}),
              "compression": float_size / model_size(bits, weights, rest), "experiment": best["experiment"],
              "candidates": evidence}
    logbook.write_json("mqat/result.json", result)
    if world.is_main:
        print(f"MQAT: bits {', '.join(f'{m} {b}' for m, b in bits.items())}, flow {' -> '.join(order)}: "
              f"{task.best_metric} {result['metric']:.2f} (float {sens.float_metric:.2f}) at "
              f"{result['compression']:.2f}x compression", flush=True)
    run_baselines(task, cfg, world, logbook, device, init, ledger, weights, rest)
    markdown = write_tables(logbook.root, list(NAMES), modules, task.best_metric, task.published, world.is_main)
    if world.is_main:
        print(f"\n{markdown}\n\ntables written to {logbook.root / 'tables'}", flush=True)
    return result


def run_baselines(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
                  init: Path, ledger: Ledger, weights: dict[str, int], rest: int) -> dict:
    """What the tables compare MQAT with (`mqat.baselines`), each run once (ledger or
    finished child): the float model fine-tuned like a probe (what fine-tuning alone
    does), one module alone at each ablation bit-width, uniform QAT of every module per
    algorithm and bits, and HAWQ-V3 in the child `hawq`. `mqat/baselines.json`."""
    settings, modules = cfg["mqat"]["baselines"], list(task.groups)
    float_size = model_size({m: FLOAT for m in modules}, weights, rest)
    out: dict = {}
    module = settings["ablation_module"]
    if module is not None and settings["ablation_bits"]:
        if module not in modules:
            raise ConfigError(f"config key 'mqat.baselines.ablation_module': {module!r} is not one of {modules}")
        run = ledger.cached(StagedRuns(task, cfg, world, logbook, device, init))
        rows = []
        for b in settings["ablation_bits"]:
            bits = {m: b if m == module else FLOAT for m in modules}
            rows.append({"bits": b, "metric": run(bits, None)["metric"],
                         "compression": float_size / model_size(bits, weights, rest)})
        out["ablation"] = {"module": module, "rows": rows}
    if settings["float_finetune"]:
        run = ledger.cached(StagedRuns(task, cfg, world, logbook, device, init, FINETUNE), FINETUNE)
        out["float_finetune"] = run({m: FLOAT for m in modules}, None)["metric"]
    epochs = cfg["mqat"]["stage_epochs"] * len(modules)
    out["uniform"] = []
    for algorithm in settings["uniform_algorithms"]:
        run = ledger.cached(StagedRuns(task, cfg, world, logbook, device, init, algorithm, epochs), algorithm)
        for b in settings["uniform_bits"]:
            bits = {m: b for m in modules}
            out["uniform"].append({"algorithm": algorithm, "bits": b, "metric": run(bits, None)["metric"],
                                   "compression": float_size / model_size(bits, weights, rest)})
    if settings["hawq"]:
        hawq = run_hawq(task, cfg, world, logbook.child("hawq"), device, init)
        out["hawq"] = {k: hawq[k] for k in ("metric", "compression", "bits", "experiment")}
    logbook.write_json("mqat/baselines.json", out)
    return out
