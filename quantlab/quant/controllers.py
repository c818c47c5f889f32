"""Controllers: epoch schedules that change quantizers during training (pulp quantlab's pattern).

A controller has `on_epoch_start(epoch)`, `after_step(optimizer)` and state_dict /
load_state_dict; the trainer calls the hooks, saves the state in every checkpoint and
broadcasts it from rank 0 at start and after a resume.
"""
from __future__ import annotations

import torch
from torch import nn

from quantlab.quant.layers import INQWeight


class INQController:
    """Freezes every INQ layer to the scheduled fraction at the scheduled epochs, and clears
    the optimizer state (momentum, Adam moments) of frozen entries after every step, so a
    frozen entry is never pushed again and the rest restart cleanly after each INQ step."""

    def __init__(self, model: nn.Module, schedule: dict[int, float]) -> None:
        """`schedule`: {epoch: fraction frozen}, as quantlab.quant.qat.inq_schedule checks it."""
        self.layers = [m for m in model.modules() if isinstance(getattr(m, "wq", None), INQWeight)]
        self.schedule = dict(schedule)
        self.fraction = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        due = [f for e, f in self.schedule.items() if e <= epoch]
        target = max(due, default=0.0)
        if target > self.fraction:
            for layer in self.layers:
                layer.wq.freeze(layer.float_weight(), target)
            self.fraction = target

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for layer in self.layers:
            trainable = layer.wq.trainable()
            for value in optimizer.state.get(layer.float_weight(), {}).values():
                if isinstance(value, torch.Tensor) and value.shape == trainable.shape:
                    value.mul_(trainable)

    def state_dict(self) -> dict:
        return {"fraction": self.fraction}

    def load_state_dict(self, state: dict) -> None:
        self.fraction = state["fraction"]
