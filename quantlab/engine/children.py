"""Child runs of a search: one full data-parallel training in a child experiment folder,
resumed where an interrupted search left it and never trained again once finished."""
from __future__ import annotations

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
        if state["epoch"] >= cfg["training"]["epochs"]:
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
