"""Per-layer Hessian traces by Hutchinson's estimator (HAWQ-V2/V3).

tr(H_l) = E_v[v_l^T (H v)_l] for Rademacher v over all parameters: the cross-layer blocks
of H vanish in expectation, so one Hessian-vector product per sample estimates every
layer's trace at once. H v comes from double back-propagation (Pearlmutter's trick).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


def rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, like.shape, generator=generator, device="cpu", dtype=torch.int8)
    return (signs.to(like.dtype) * 2 - 1).to(like.device)


def hessian_vector_product(loss: torch.Tensor, params: list[torch.Tensor],
                           vectors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vectors))
    return torch.autograd.grad(dot, params)


def block_quadratic_forms(loss: torch.Tensor, weights: dict[str, torch.Tensor],
                          vectors: dict[str, torch.Tensor]) -> dict[str, float]:
    """v_l^T (H v)_l for each named weight, from one Hessian-vector product."""
    names = list(weights)
    hv = hessian_vector_product(loss, [weights[n] for n in names], [vectors[n] for n in names])
    return {n: float((vectors[n] * h).sum()) for n, h in zip(names, hv)}


def hutchinson_traces(weights: dict[str, torch.Tensor], loss_batches: Iterable[Callable[[], torch.Tensor]],
                      samples: int, seed: int = 0) -> dict[str, float]:
    """Estimated tr(H_l) of the loss averaged over the batches: `samples` Rademacher
    vectors per batch, each batch's loss recomputed per vector (no graph is kept)."""
    generator = torch.Generator().manual_seed(seed)
    totals = {n: 0.0 for n in weights}
    count = 0
    for make_loss in loss_batches:
        for _ in range(samples):
            vectors = {n: rademacher(w, generator) for n, w in weights.items()}
            for n, value in block_quadratic_forms(make_loss(), weights, vectors).items():
                totals[n] += value
            count += 1
    if count == 0:
        raise ValueError("hutchinson_traces got no batch")
    return {n: t / count for n, t in totals.items()}
