"""The layer sensitivity both bit allocations minimise (HAWQ-V3; Huang et al., Output Sensitivity-Aware DETR Quantization, section Method):

    Omega_l(b) = tr_l / n_l x sum over the layer's weight tensors ||Q_b(W) - R||^2

with tr_l the layer's trace (Hessian or Fisher; a mean trace, so large layers are not
favoured by their size alone), n_l its weight count, Q_b the symmetric max-abs quantizer
(eq. 6) at b bits, and R the float weights, or their `reference_bits` quantization
(Huang et al.'s "quant" variant). A layer may hold several tensors (an attention layer's
input and output projections): traces are estimated per tensor and summed per layer.
"""
from __future__ import annotations

from typing import Any

import torch

from quantlab.quant.quantizers import symmetric_linear


def flat(tensors: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One entry per tensor (`layer#i`), the form the trace estimators take."""
    return {f"{name}#{i}": t for name, ts in tensors.items() for i, t in enumerate(ts)}


def per_layer(values: dict[str, Any]) -> dict[str, Any]:
    """Per-tensor values of `flat` names (numbers, or arrays of samples) summed back per layer."""
    out: dict[str, Any] = {}
    for key, v in values.items():
        layer = key.rsplit("#", 1)[0]
        out[layer] = out.get(layer, 0.0) + v
    return out


@torch.no_grad()
def omega(tensors: dict[str, list[torch.Tensor]], traces: dict[str, float], bits: list[int],
          reference_bits: int | None = None) -> dict[str, dict[int, float]]:
    out = {}
    for name, ts in tensors.items():
        n = sum(t.numel() for t in ts)
        refs = [symmetric_linear(t, reference_bits) if reference_bits else t for t in ts]
        out[name] = {b: traces[name] / n * sum(float(((symmetric_linear(t, b) - r) ** 2).sum())
                                               for t, r in zip(ts, refs)) for b in bits}
    return out
