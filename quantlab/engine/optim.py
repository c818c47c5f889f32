"""Optimizer and learning-rate schedule from the `training` config section."""
from __future__ import annotations

import torch

from quantlab.engine.errors import ConfigError


def build_optimizer(params, cfg: dict, world_size: int, lr_scaling: str) -> torch.optim.Optimizer:
    """SGD or AdamW; lr x ranks under linear scaling (the batch grows with the ranks)."""
    scale = {"linear": world_size, "none": 1}.get(lr_scaling)
    if scale is None:
        raise ConfigError(f"config key 'engine.lr_scaling': expected linear or none, got {lr_scaling!r}")
    lr = cfg["lr"] * scale
    name = cfg["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg["weight_decay"])
    raise ConfigError(f"config key 'training.optimizer': expected sgd or adamw, got {name!r}")


def build_schedule(optimizer: torch.optim.Optimizer, cfg: dict) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: optional linear warm-up, then multistep, cosine or constant."""
    sched = cfg["schedule"]
    epochs, warmup = cfg["epochs"], sched["warmup_epochs"]
    kind = sched["type"]
    if kind == "multistep":
        main = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[m - warmup for m in sched["milestones"]], gamma=sched["gamma"])
    elif kind == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, epochs - warmup), eta_min=optimizer.param_groups[0]["lr"] * sched["final_fraction"])
    elif kind == "constant":
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ConfigError(f"config key 'training.schedule.type': expected multistep, cosine or constant, got {kind!r}")
    if warmup <= 0:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=sched["warmup_factor"],
                                             total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
