"""Symmetric max-abs weights (Huang et al., Output Sensitivity-Aware DETR Quantization,
eq. 6) with a straight-through rounding gradient, and the 1-bit sign code that every
family falls back to at 1 bit."""
from __future__ import annotations

import torch

from quantlab.quant import quantizers as Q
from quantlab.quant.algorithms import Algorithm, register
from quantlab.quant.layers import Grid, _ChannelWeight


class SymmetricWeight(_ChannelWeight):
    """Max-abs symmetric linear weights (bits 2-8), or the 1-bit sign code."""

    def __init__(self, bits: int, per_channel: bool = False, axis: int = 0) -> None:
        if bits != 1:
            Q.signed_levels(bits)  # validates the range
        super().__init__(bits, per_channel, axis)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == 1:
            return Q.sign_binary(w, self.per_channel, self.axis)
        return Q.symmetric_linear(w, self.bits, self.per_channel, self.axis)

    def grid(self, w: torch.Tensor) -> Grid:
        if self.bits == 1:
            return Grid(Q.sign_scale(w.detach(), self.per_channel, self.axis), -1, 1, self.grid_axis, step=2)
        q = Q.signed_levels(self.bits)
        return Grid(Q.symmetric_scale(w, self.bits, self.per_channel, self.axis), -q, q, self.grid_axis)


def _weight(weight: torch.Tensor, bits: int, per_channel: bool, axis: int, loading: bool) -> SymmetricWeight:
    return SymmetricWeight(bits, per_channel, axis)


ALGORITHM = register(Algorithm("symmetric", "max-abs symmetric linear weights, STE rounding (1 bit: sign x mean|W|)",
                               weight=_weight, bits=(1, 8)))
