"""MQAT candidate runs as child experiments: quantize modules stage by stage, fine-tune,
evaluate. Each stage is a full data-parallel Trainer run over all Horovod ranks, started
from the previous stage's checkpoint (the float checkpoint for the first), so a stage's
quantized layers carry over and a finished stage is never trained again.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from quantlab.engine import checkpoint, distributed as dist
from quantlab.engine.logbook import Logbook
from quantlab.engine.task import Task
from quantlab.engine.trainer import Trainer
from quantlab.mqat.ledger import candidate_key
from quantlab.mqat.search import FLOAT


class StagedRuns:
    """`run(bits, order)` for the searches of quantlab.mqat.search."""

    def __init__(self, task: Task, cfg: dict, world: dist.World, logbook: Logbook,
                 device: torch.device, init: Path) -> None:
        self.task, self.cfg, self.world, self.logbook, self.device, self.init = task, cfg, world, logbook, device, init
        self.modules = list(task.groups)

    def stage_config(self, modules: list[str], bits: dict[str, int], source: Path) -> dict:
        mqat = self.cfg["mqat"]
        cfg = copy.deepcopy(self.cfg)
        cfg["quantize"]["init"] = str(source)
        cfg["quantize"]["rules"] = [{"modules": m, "algorithm": mqat["algorithm"], "bits": bits[m]}
                                    for m in modules]
        cfg["training"]["epochs"] = mqat["stage_epochs"]
        return cfg

    def stages(self, bits: dict[str, int], order: list[str] | None) -> list[list[str]]:
        """One stage per module in the flow `order`; without an order, one stage for all."""
        if order is None:
            return [[m for m in self.modules if bits[m] != FLOAT]]
        return [[m] for m in order if bits[m] != FLOAT]

    def __call__(self, bits: dict[str, int], order: list[str] | None) -> dict[str, Any]:
        name = candidate_key(bits, order).replace("|", "__").replace(">", "-").replace(",", "_").replace("=", "")
        source, metrics, child = self.init, None, None
        for index, modules in enumerate(self.stages(bits, order), start=1):
            child = self.logbook.child(f"{name}/stage{index}")
            cfg = self.stage_config(modules, bits, source)
            metrics = self._train(child, cfg, source)
            source = child.saves / "last.pt"
        if child is None:
            raise ValueError(f"candidate {bits} quantizes no module")
        return {"metric": metrics[self.task.best_metric], "experiment": str(child.root)}

    def _train(self, child: Logbook, cfg: dict, source: Path) -> dict[str, float]:
        last = child.saves / "last.pt"
        if last.is_file():
            state = checkpoint.load(last)
            if state["epoch"] >= cfg["training"]["epochs"]:
                return state["metrics"]  # a finished stage is never trained again
        if not last.is_file():
            child.create(cfg)
        trainer = Trainer(self.task, cfg, self.world, child, self.device,
                          init=None if last.is_file() else source, resume=last if last.is_file() else None)
        try:
            if last.is_file():
                trainer.resume()
            metrics = trainer.fit()
        finally:
            trainer.close()
        return metrics
