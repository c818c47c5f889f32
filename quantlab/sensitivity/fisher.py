"""Per-layer Fisher traces from squared gradients (papers.md B).

The empirical Fisher of a loss L is F = E_x[g g^T] with g = dL(x)/dW, so its trace per
layer is E_x ||dL(x)/dW_l||^2: one backward pass per sample, no Hessian-vector product.
Samples must be single images (per-sample gradients); the mean over samples is returned.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


def fisher_traces(weights: dict[str, torch.Tensor], sample_losses: Iterable[Callable[[], torch.Tensor]]
                  ) -> dict[str, float]:
    names = list(weights)
    totals = {n: 0.0 for n in names}
    count = 0
    for make_loss in sample_losses:
        grads = torch.autograd.grad(make_loss(), [weights[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                totals[n] += float((g.detach() ** 2).sum())
        count += 1
    if count == 0:
        raise ValueError("fisher_traces got no sample")
    return {n: t / count for n, t in totals.items()}
