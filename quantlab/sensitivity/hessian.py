"""Per-layer Hessian traces by Hutchinson's estimator (HAWQ-V2/V3).

tr(H_l) = E_v[v_l^T (H v)_l] for Rademacher v over all parameters: the cross-layer blocks
of H vanish in expectation, so one Hessian-vector product per sample estimates every
layer's trace at once. H v comes from double back-propagation (Pearlmutter's trick).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
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


def hutchinson_samples(weights: dict[str, torch.Tensor], loss_batches: Iterable[Callable[[], torch.Tensor]],
                       samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-layer Hutchinson samples: one value per batch (the mean of v_l^T (H v)_l over
    its `samples` Rademacher vectors, each recomputing the batch's loss: no graph is
    kept), or one per vector when there is a single batch. A batch's vectors share its
    loss, so the batch is the unit a standard error counts (quantlab.sensitivity.traces)."""
    generator = torch.Generator().manual_seed(seed)
    found: dict[str, list[list[float]]] = {n: [] for n in weights}
    for make_loss in loss_batches:
        batch: dict[str, list[float]] = {n: [] for n in weights}
        for _ in range(samples):
            vectors = {n: rademacher(w, generator) for n, w in weights.items()}
            for n, value in block_quadratic_forms(make_loss(), weights, vectors).items():
                batch[n].append(value)
        for n in weights:
            found[n].append(batch[n])
    if not any(found.values()):
        raise ValueError("hutchinson_samples got no batch")
    return {n: np.array(v[0] if len(v) == 1 else [np.mean(b) for b in v]) for n, v in found.items()}


def hutchinson_traces(weights: dict[str, torch.Tensor], loss_batches: Iterable[Callable[[], torch.Tensor]],
                      samples: int, seed: int = 0) -> dict[str, float]:
    """Estimated tr(H_l) of the loss averaged over the batches: `samples` Rademacher
    vectors per batch (the mean of `hutchinson_samples`)."""
    return {n: float(v.mean()) for n, v in hutchinson_samples(weights, loss_batches, samples, seed).items()}
