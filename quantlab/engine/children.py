"""Child runs of a search: one full data-parallel training in a child experiment folder,
resumed where an interrupted search left it and never trained again once finished."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from quantlab.engine import checkpoint, distributed as dist
from quantlab.engine.logbook import Logbook
from quantlab.engine.task import Task
from quantlab.engine.trainer import Trainer


def fit_child(task: Task, cfg: dict, world: dist.World, child: Logbook, device: torch.device,
              source: Path) -> dict[str, float]:
    """Train `child` from `source` to `cfg`'s epochs (or finish it) and return its last
    metrics; a finished child only returns the metrics its last checkpoint recorded."""
    last = child.saves / "last.pt"
    if last.is_file():
        state = checkpoint.load(last)
        if state["epoch"] >= cfg["training"]["epochs"] and not state.get("eval_due", False):
            return state["metrics"]
    else:
        child.create(cfg)
    trainer = Trainer(task, cfg, world, child, device,
                      init=None if last.is_file() else source, resume=last if last.is_file() else None)
    try:
        if last.is_file():
            trainer.resume()
        return trainer.fit()
    finally:
        trainer.close()


def evaluate_child(task: Task, cfg: dict, world: dist.World, child: Logbook, device: torch.device,
                   source: Path, rules: list[dict], tag: str) -> dict[str, float]:
    """Evaluate `source` quantized by `rules` (none: as it is), without training, in `child`."""
    child_cfg = copy.deepcopy(cfg)
    child_cfg["quantize"]["rules"] = rules
    child.create(child_cfg)
    trainer = Trainer(task, child_cfg, world, child, device, init=source)
    try:
        trainer.sync()
        return trainer.evaluate(cfg["engine"]["eval_split"], tag, quiet=True)
    finally:
        trainer.close()
