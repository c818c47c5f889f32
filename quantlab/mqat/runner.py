"""MQAT candidate runs as child experiments: quantize modules stage by stage, fine-tune,
evaluate. Each stage is a full data-parallel Trainer run over all Horovod ranks, started
from the previous stage's checkpoint (the float checkpoint for the first), so a stage's
quantized layers carry over and a finished stage is never trained again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quantlab.engine import distributed as dist
from quantlab.engine.children import fit_child
from quantlab.engine.config import child_config
from quantlab.engine.logbook import Logbook
from quantlab.engine.task import Task
from quantlab.mqat.ledger import candidate_key
from quantlab.mqat.search import FLOAT

SIGN = "symmetric"  # the 1-bit sign code, for bits below what INQ and LSQ take
FINETUNE = "finetune"  # the tag of a run that quantizes nothing: float fine-tuning alone


class StagedRuns:
    """`run(bits, order)` for the searches of quantlab.mqat.search; `algorithm` and
    `epochs` default to `mqat.algorithm` and `mqat.stage_epochs` (baselines change them)."""

    def __init__(self, task: Task, cfg: dict, world: dist.World, logbook: Logbook,
                 device: torch.device, init: Path, algorithm: str | None = None, epochs: int | None = None) -> None:
        self.task, self.cfg, self.world, self.logbook, self.device, self.init = task, cfg, world, logbook, device, init
        self.modules = list(task.groups)
        self.algorithm = algorithm
        self.epochs = epochs or cfg["mqat"]["stage_epochs"]

    def stage_config(self, modules: list[str], bits: dict[str, int], source: Path) -> dict:
        algorithm = self.algorithm or self.cfg["mqat"]["algorithm"]
        rules = [{"modules": m, "algorithm": SIGN if bits[m] == 1 else algorithm, "bits": bits[m]} for m in modules]
        return child_config(self.cfg, str(source), rules, self.epochs)

    def stages(self, bits: dict[str, int], order: list[str] | None) -> list[list[str]]:
        """One stage per module in the flow `order`; without an order, one stage for all
        (with no module quantized: one float fine-tuning stage)."""
        if order is None:
            return [[m for m in self.modules if bits[m] != FLOAT]]
        return [[m] for m in order if bits[m] != FLOAT]

    def __call__(self, bits: dict[str, int], order: list[str] | None) -> dict[str, Any]:
        key = candidate_key(bits, order, self.algorithm)
        name = key.replace("|", "__").replace(">", "-").replace(",", "_").replace("=", "").replace(":", "_")
        source, metrics, child = self.init, None, None
        for index, modules in enumerate(self.stages(bits, order), start=1):
            child = self.logbook.child(f"{name}/stage{index}")
            metrics = fit_child(self.task, self.stage_config(modules, bits, source), self.world, child,
                                self.device, source)
            source = child.saves / "last.pt"
        if child is None:
            raise ValueError(f"candidate {bits} in flow {order} has no stage")
        return {"metric": metrics[self.task.best_metric], "metrics": metrics, "experiment": str(child.root)}
