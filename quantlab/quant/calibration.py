"""The calibration pass of activation quantizers (STE ranges, LSQ initial steps).

The trainer runs a few batches through the model in eval mode (BatchNorm statistics are
not touched) while the activation quantizers record their statistics; ranks then combine
the statistics (max for ranges, mean for LSQ steps) so every rank fixes the same grid.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from quantlab.quant.layers import _CalibratedActivation

#: combines one statistic over ranks: (tensor, "max" | "mean", name) -> tensor
Reduce = Callable[[torch.Tensor, str, str], torch.Tensor]


def pending(model: nn.Module) -> dict[str, _CalibratedActivation]:
    """The activation quantizers still calibrating, by qualified name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, _CalibratedActivation) and bool(m.calibrating)}


def local(value: torch.Tensor, reduction: str, name: str) -> torch.Tensor:
    """The reduction of a single process."""
    return value


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, object], object],
              reduce: Reduce = local) -> int:
    """Feed `batches` through `model`, then fix every pending quantizer; returns the
    number of batches used. Does nothing (0) when no quantizer is pending."""
    todo = pending(model)
    if not todo:
        return 0
    was_training = model.training
    model.eval()
    used = 0
    for batch in batches:
        forward(model, batch)
        used += 1
    model.train(was_training)
    if used == 0:
        raise RuntimeError("activation calibration got no batch")
    for name, quantizer in sorted(todo.items()):
        value = reduce(quantizer.calibration_statistic(), quantizer.reduction, f"calibration.{name}")
        try:
            quantizer.end_calibration(value)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}") from None
    return used
