"""ONNX export of a fake-quant model as QuantizeLinear / DequantizeLinear pairs.

On a copy of the model every weight quantizer is replaced by its quantized weight, held
as a constant and passed through a Q/DQ pair on the layer's integer grid (per tensor, or
per output channel along the grid's axis: 1 for ConvTranspose2d, 0 otherwise), and every activation quantizer by a Clip to its range followed by a
Q/DQ pair (int8 for signed grids, uint8 for unsigned ones; grids narrower than 8 bits
clip to their own range first). A grid whose codes skip values (the 1-bit sign code,
+-1 x alpha) goes through the same pair: its constant weights lie exactly on codes.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from quantlab.files import write_atomic
from quantlab.quant.layers import Grid, _CalibratedActivation, _Quantized

OPSET = 17


def fake_quant(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """x on the 8-bit ONNX grid that contains `grid` (values already on it are kept)."""
    qmin, qmax = (0, 255) if grid.low >= 0 else (-128, 127)
    if grid.axis is None:
        scale = float(grid.scale)
        if (grid.low, grid.high) != (qmin, qmax):
            x = torch.clamp(x, grid.low * scale, grid.high * scale)
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax)
    scale = grid.scale.reshape(-1).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(x, scale, zero, grid.axis, qmin, qmax)


class _QDQWeight(nn.Module):
    """The layer's quantized weight as a constant, through a Q/DQ pair."""

    def __init__(self, quantized: torch.Tensor, grid: Grid) -> None:
        super().__init__()
        self.register_buffer("quantized", quantized.detach().clone())
        self.grid = grid

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant(self.quantized, self.grid)


class _QDQActivation(nn.Module):
    def __init__(self, grid: Grid) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant(x, self.grid)


def qdq_model(model: nn.Module) -> nn.Module:
    """A copy of `model` whose quantizers are Q/DQ pairs (for tracing, not training)."""
    probe = copy.deepcopy(model).eval()
    for layer in [m for m in probe.modules() if isinstance(m, _Quantized)]:
        weight = layer.float_weight().detach()
        grid = layer.wq.grid(weight)
        layer.wq = _QDQWeight(grid.codes(layer.wq(weight).detach()) * grid.scale, grid)
        if isinstance(layer.aq, _CalibratedActivation):
            if bool(layer.aq.calibrating):
                raise ValueError("activation quantizers must be calibrated before ONNX export")
            layer.aq = _QDQActivation(layer.aq.grid())
    return probe


def export_onnx(model: nn.Module, args: tuple, path: Path, input_names: list[str] | None = None) -> None:
    """Write `model` (called on `args`) as ONNX with Q/DQ pairs, via the TorchScript exporter
    (the dynamo exporter cannot yet decompose fake_quantize ops)."""
    probe = qdq_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # constants are meant
        write_atomic(path, lambda fh: torch.onnx.export(probe, args, fh, dynamo=False, opset_version=OPSET,
                                                        input_names=input_names, do_constant_folding=True))
