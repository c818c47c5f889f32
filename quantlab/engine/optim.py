"""Optimizer and learning-rate schedule from the `training` config section."""
from __future__ import annotations

import re
from typing import Any

import torch

from quantlab.errors import ConfigError


def param_groups(named: list[tuple[str, torch.nn.Parameter]], lr: float, factors: dict[str, float]) -> list[dict]:
    """One group per `training.lr_groups` pattern (lr x its factor; the first pattern that
    fully matches a parameter's name wins), then one for the rest at `lr`."""
    patterns = [(re.compile(p), f) for p, f in factors.items()]
    groups: list[dict] = [{"params": [], "lr": lr * f} for _, f in patterns] + [{"params": [], "lr": lr}]
    for name, param in named:
        index = next((i for i, (p, _) in enumerate(patterns) if p.fullmatch(name)), len(patterns))
        groups[index]["params"].append(param)
    return [g for g in groups if g["params"]]


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "constant", "inq")
LR_SCALINGS = ("linear", "none")
#: the state-dict entries of torch optimizers and schedulers that hold learning rates
LR_KEYS = frozenset({"lr", "initial_lr", "base_lrs", "_last_lr", "eta_min"})


def lr_scale(lr_scaling: str, world_size: int) -> int:
    """The factor on the configured lr: the number of ranks under linear scaling (the
    global batch grows with them), else 1."""
    if lr_scaling not in LR_SCALINGS:
        raise ConfigError(f"config key 'engine.lr_scaling': expected one of {LR_SCALINGS}, got {lr_scaling!r}")
    return world_size if lr_scaling == "linear" else 1


def build_optimizer(named: list[tuple[str, torch.nn.Parameter]], cfg: dict, world_size: int,
                    lr_scaling: str) -> torch.optim.Optimizer:
    """SGD or AdamW at lr x `lr_scale`, with the multi-tensor (foreach) update: PyTorch
    picks it only on CUDA, but on the CPU too it gives the same values as the per-parameter
    loop, and QAT adds ~90 one-element step sizes whose per-parameter cost is all overhead."""
    lr = cfg["lr"] * lr_scale(lr_scaling, world_size)
    params = param_groups(named, lr, cfg.get("lr_groups", {}))  # absent in configs of older experiments
    name = cfg["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                               foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg["weight_decay"], foreach=True)
    raise ConfigError(f"config key 'training.optimizer': expected one of {OPTIMIZERS}, got {name!r}")


def rescale_lr(state: Any, ratio: float) -> Any:
    """An optimizer's or scheduler's state dict with every learning rate in it times
    `ratio`: how a run resumed on another number of ranks keeps linear lr scaling."""
    if isinstance(state, dict):
        return {k: _times(v, ratio) if k in LR_KEYS else rescale_lr(v, ratio) for k, v in state.items()}
    if isinstance(state, list):
        return [rescale_lr(v, ratio) for v in state]
    return state


def _times(value: Any, ratio: float) -> Any:
    if isinstance(value, list):
        return [v * ratio for v in value]
    return value * ratio


def inq_multiplier(steps: list[int], decay_after: int = 2, factor: float = 0.1):
    """The MQAT reference code's lr multiplier for INQ: back to 1 at every INQ step (an
    epoch of the frozen-fraction schedule) and x`factor` from `decay_after` epochs later."""
    ordered = sorted(steps)

    def multiplier(epoch: int) -> float:
        last = max((s for s in ordered if s <= epoch), default=0)
        return 1.0 if epoch - last < decay_after else factor
    return multiplier


def build_schedule(optimizer: torch.optim.Optimizer, cfg: dict,
                   inq_steps: list[int] | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: optional linear warm-up, then multistep, cosine, constant, or
    `inq` (the multiplier of `inq_multiplier` over the epochs of `quantize.inq_schedule`)."""
    sched = cfg["schedule"]
    epochs, warmup = cfg["epochs"], sched["warmup_epochs"]
    kind = sched["type"]
    if kind == "multistep":
        main = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[m - warmup for m in sched["milestones"]], gamma=sched["gamma"])
    elif kind == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, epochs - warmup), eta_min=optimizer.param_groups[0]["lr"] * sched["final_fraction"])
    elif kind == "inq":
        main = torch.optim.lr_scheduler.LambdaLR(optimizer, inq_multiplier([e - warmup for e in inq_steps or [0]]))
    elif kind == "constant":
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ConfigError(f"config key 'training.schedule.type': expected one of {SCHEDULES}, got {kind!r}")
    if warmup <= 0:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=sched["warmup_factor"],
                                             total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
