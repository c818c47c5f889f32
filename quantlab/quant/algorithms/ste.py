"""Activations on a uniform grid whose range a calibration pass fixes (max|x|), rounded
with a straight-through gradient: the activation quantizer of the MQAT reference code."""
from __future__ import annotations

import torch

from quantlab.quant import quantizers as Q
from quantlab.quant.algorithms import Algorithm, register
from quantlab.quant.layers import Grid, _CalibratedActivation


class STEActivation(_CalibratedActivation):
    """Activations on a uniform grid whose range is calibrated (max|x|), then fixed.

    After calibration x is clipped to the range and rounded with a straight-through
    gradient. Unsigned inputs (after ReLU) use [0, max] with 2^b - 1 steps, signed ones
    [-max, max] with 2^(b-1) - 1 steps on each side.
    """

    reduction = "max"

    def __init__(self, bits: int, signed: bool) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.register_buffer("range", torch.zeros(1))

    @property
    def levels(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    def calibration_statistic(self) -> torch.Tensor:
        return self.range.clone()

    def end_calibration(self, value: torch.Tensor) -> None:
        if float(value) <= 0:
            raise RuntimeError("STEActivation: calibration saw no non-zero input")
        self.range.copy_(value.reshape(1))
        self.calibrating.fill_(0)

    def grid(self) -> Grid:
        return Grid(self.range / self.levels, -self.levels if self.signed else 0, self.levels, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_calibrating():
            self.range.copy_(torch.maximum(self.range, x.detach().abs().max().reshape(1)))
            return x
        return Q.clipped_ste(x, self.range / self.levels, -self.levels if self.signed else 0, self.levels)


ALGORITHM = register(Algorithm("ste", "calibrated max|x| range, straight-through rounding (activations)",
                               activation=STEActivation))
