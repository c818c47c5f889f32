"""Learned step size quantization (Esser et al., ICLR 2020): a learned step per tensor or
per channel for weights, and a learned step for activations initialised from a
calibration pass."""
from __future__ import annotations

import torch
from torch import nn

from quantlab.quant import quantizers as Q
from quantlab.quant.algorithms import Algorithm, register
from quantlab.quant.layers import Grid, _CalibratedActivation, _ChannelWeight


class LSQWeight(_ChannelWeight):
    """LSQ weights: a learned step per tensor (shape [1]) or per channel of `axis` (shaped
    to broadcast: [C, 1, 1, 1] on axis 0, [1, C, 1, 1] on axis 1), signed range."""

    def __init__(self, weight: torch.Tensor, bits: int, per_channel: bool = False, axis: int = 0) -> None:
        super().__init__(bits, per_channel, axis)
        self.q_neg, self.q_pos = Q.lsq_range(bits, signed=True)
        init = Q.lsq_init_step(weight, self.q_pos, per_channel, axis)
        self.step = nn.Parameter((init if per_channel else init.reshape(1)).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return Q.lsq(w, self.step, self.q_neg, self.q_pos)

    def grid(self, w: torch.Tensor) -> Grid:
        return Grid(self.step.detach(), -self.q_neg, self.q_pos, self.grid_axis)


class LSQActivation(_CalibratedActivation):
    """LSQ activations: the step starts at 2 mean|x| / sqrt(Q_P) over the calibration
    batches (the LSQ paper uses the first batch: one calibration batch), then is learned."""

    reduction = "mean"

    def __init__(self, bits: int, signed: bool) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.q_neg, self.q_pos = Q.lsq_range(bits, signed)
        self.step = nn.Parameter(torch.zeros(1))
        self.register_buffer("abs_mean_sum", torch.zeros(1))
        self.register_buffer("batches", torch.zeros(1))

    def calibration_statistic(self) -> torch.Tensor:
        return self.abs_mean_sum / self.batches.clamp_min(1)

    def end_calibration(self, value: torch.Tensor) -> None:
        if float(value) <= 0:
            raise RuntimeError("LSQActivation: calibration saw no non-zero input")
        with torch.no_grad():
            self.step.copy_((2 * value / self.q_pos ** 0.5).reshape(1))
        self.calibrating.fill_(0)

    def grid(self) -> Grid:
        return Grid(self.step.detach(), -self.q_neg, self.q_pos, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_calibrating():
            self.abs_mean_sum.add_(x.detach().abs().mean())
            self.batches.add_(1)
            return x
        return Q.lsq(x, self.step, self.q_neg, self.q_pos)


def _weight(weight: torch.Tensor, bits: int, per_channel: bool, axis: int, loading: bool) -> LSQWeight:
    return LSQWeight(weight, bits, per_channel, axis)


ALGORITHM = register(Algorithm("lsq", "learned step size, weights and activations", weight=_weight,
                               activation=LSQActivation))
