"""HAWQ-V3 layer sensitivities: Omega_l(b) = mean Hessian trace of layer l x ||Q_b(W_l) - W_l||^2.

HAWQ-V2/V3 use the average trace tr(H_l) / n_l (n_l = number of weights), so large
layers are not favoured by their size alone; the perturbation uses the quantizer that QAT
will train with, at each candidate bit-width.
"""
from __future__ import annotations

from typing import Callable

import torch

#: quantize a weight tensor at b bits (the QAT algorithm's forward, e.g. symmetric max-abs)
Quantize = Callable[[torch.Tensor, int], torch.Tensor]


def sensitivities(weights: dict[str, torch.Tensor], traces: dict[str, float], bits: list[int],
                  quantize: Quantize) -> dict[str, dict[int, float]]:
    out = {}
    with torch.no_grad():
        for name, w in weights.items():
            mean_trace = traces[name] / w.numel()
            out[name] = {b: mean_trace * float(((quantize(w, b) - w) ** 2).sum()) for b in bits}
    return out


def sizes(weights: dict[str, torch.Tensor], bits: list[int]) -> dict[str, dict[int, float]]:
    """Storage of each layer's weights at each bit-width, in bits."""
    return {name: {b: float(w.numel() * b) for b in bits} for name, w in weights.items()}
