"""The fake-quant model as a plain float model whose quantized weights lie on their grids,
with the integer codes of each quantized layer and its learned input grid.

Export traces this copy: each quantized layer computes with its quantized weight (a
constant), and its activation quantizer is left out, because the integer graph places its
own quantize / dequantize pairs (`qdq`) with the learned grid where QAT learned one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantlab.errors import CheckpointError
from quantlab.quant.layers import Grid, _CalibratedActivation, _Quantized


@dataclass(frozen=True)
class LayerCodes:
    """A quantized layer's weight as integer codes (value = code x scale along `axis`, the
    weight's output-channel axis, or one scale) and the grid its input was trained on."""
    name: str
    codes: np.ndarray
    axis: int | None
    input_grid: Grid | None


class _Constant(nn.Module):
    """Stands in for a weight quantizer: returns the quantized weight it was given."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.value


def lowered(model: nn.Module) -> tuple[nn.Module, list[LayerCodes]]:
    """A float copy of `model` computing with its quantized weights, and each quantized
    layer's codes. An INQ layer that is not fully frozen has no integer weights: that is a
    CheckpointError naming the layer, raised before anything is written."""
    plain = copy.deepcopy(model).eval()
    found = []
    for name, layer in plain.named_modules():
        if not isinstance(layer, _Quantized):
            continue
        weight = layer.float_weight().detach()
        try:
            grid = layer.wq.grid(weight)
        except ValueError as exc:
            raise CheckpointError(f"layer {name}: {exc}") from None
        value = layer.wq(weight).detach()
        codes = grid.codes(value).cpu().numpy().astype(np.int8)
        grid_in = None
        if isinstance(layer.aq, _CalibratedActivation):
            if bool(layer.aq.calibrating):
                raise CheckpointError(f"layer {name}: its activation quantizer was never calibrated")
            grid_in = layer.aq.grid()
        found.append(LayerCodes(name, codes, grid.axis, grid_in))
        layer.wq, layer.aq = _Constant(value), None
    return plain, found
