"""The MQAT modes: evaluate the float start, then the searches, each candidate a child run."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from quantlab.engine import distributed as dist
from quantlab.engine.logbook import Logbook
from quantlab.engine.task import Task
from quantlab.engine.trainer import Trainer
from quantlab.mqat.ledger import Ledger
from quantlab.mqat.runner import StagedRuns
from quantlab.mqat.search import FLOAT, Sensitivity, sensitivity


def float_metric(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
                 init: Path, ledger: Ledger) -> float:
    """The float checkpoint's metric on the evaluation split (recorded like a candidate)."""
    def evaluate(bits: dict[str, int], order: list[str] | None) -> dict:
        float_cfg = copy.deepcopy(cfg)
        float_cfg["quantize"]["rules"] = []
        child = logbook.child("float")
        child.create(float_cfg)
        trainer = Trainer(task, float_cfg, world, child, device, init=init)
        try:
            trainer.sync()
            metrics = trainer.evaluate(cfg["engine"]["eval_split"], "float", quiet=True)
        finally:
            trainer.close()
        return {"metric": metrics[task.best_metric]}
    return ledger.cached(evaluate)({m: FLOAT for m in task.groups}, None)["metric"]


def cube_table(sens: Sensitivity, modules: list[str], metric: str) -> str:
    head = " | ".join(m for m in modules)
    lines = [f"| {head} | {metric} | change |", "|" + "---|" * (len(modules) + 2),
             f"| {' | '.join(str(FLOAT) for _ in modules)} | {sens.float_metric:.2f} | |"]
    for row in sens.cube:
        bits = " | ".join(str(row["bits"][m]) for m in modules)
        lines.append(f"| {bits} | {row['metric']:.2f} | {row['delta']:+.2f} |")
    return "\n".join(lines)


def run_sensitivity(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
                    init: Path) -> Sensitivity:
    """The module cube at `mqat.probe_bits` and the single-module ranking, written to
    `mqat/sensitivity.json` and `mqat/cube.md`; finished probes are never re-run."""
    ledger = Ledger(logbook.root / "mqat" / "ledger.json", writer=world.is_main)
    modules = list(task.groups)
    start = float_metric(task, cfg, world, logbook, device, init, ledger)
    runs = ledger.cached(StagedRuns(task, cfg, world, logbook, device, init))
    sens = sensitivity(modules, start, runs, cfg["mqat"]["probe_bits"])
    table = cube_table(sens, modules, task.best_metric)
    logbook.write_json("mqat/sensitivity.json", {"float_metric": sens.float_metric, "cube": sens.cube,
                                                 "singles": sens.singles, "ranking": sens.ranking})
    if world.is_main:
        (logbook.root / "mqat" / "cube.md").write_text(table + "\n")
        print(f"\nmodule sensitivity at {cfg['mqat']['probe_bits']} bits:\n{table}\n"
              f"flow by sensitivity (least harmful first): {' -> '.join(sens.ranking)}", flush=True)
    return sens
