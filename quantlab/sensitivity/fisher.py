"""Per-layer Fisher traces from squared gradients (Yang et al., Fisher-aware Quantization for DETR Detectors with Critical-category Objectives (2024)).

The empirical Fisher of a loss L is F = E_x[g g^T] with g = dL(x)/dW, so its trace per
layer is E_x ||dL(x)/dW_l||^2: one backward pass per sample, no Hessian-vector product.
Samples must be single images (per-sample gradients); the mean over samples is returned.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch


def fisher_samples(weights: dict[str, torch.Tensor], sample_losses: Iterable[Callable[[], torch.Tensor]]
                   ) -> dict[str, np.ndarray]:
    """||dL(x)/dW_l||^2 per layer, one value per sample."""
    names = list(weights)
    found: dict[str, list[float]] = {n: [] for n in names}
    for make_loss in sample_losses:
        grads = torch.autograd.grad(make_loss(), [weights[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            found[n].append(0.0 if g is None else float((g.detach() ** 2).sum()))
    if not found[names[0]]:
        raise ValueError("fisher_samples got no sample")
    return {n: np.array(v) for n, v in found.items()}


def fisher_traces(weights: dict[str, torch.Tensor], sample_losses: Iterable[Callable[[], torch.Tensor]]
                  ) -> dict[str, float]:
    """The mean over samples of `fisher_samples`: the per-layer empirical Fisher trace."""
    return {n: float(v.mean()) for n, v in fisher_samples(weights, sample_losses).items()}
