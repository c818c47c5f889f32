"""Terms added to the training loss during QAT, built from the `quantize` section like
the controllers (quantlab.quant.qat), so the trainer runs them without knowing them.

A term is called after the forward pass as `term(model, outputs, batch)` and returns a
scalar tensor that is added to the task's loss terms under its name.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

#: a loss of the network's outputs on a batch, as named terms (e.g. a task's critical loss)
Objective = Callable[[Any, Any], dict[str, torch.Tensor]]


def trainable_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight matrices and kernels a regularizer covers: trainable, at least 2-D
    (biases and norm scales carry no quantization error)."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


def fisher_penalty(weights: list[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
    """Tr(F) of `loss` estimated from its squared gradients, differentiable (double
    backward), so that lambda x Tr(F) can be minimised with the loss."""
    grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
    return sum((g ** 2).sum() for g in grads if g is not None)


class FisherTrace:
    """lambda x Tr(F) of an objective (Yang et al. 2024, Fisher-trace regularization: the critical-category loss), which
    penalises the sharp minima that overfit after quantization."""

    def __init__(self, weight: float, objective: Objective) -> None:
        self.weight, self.objective = weight, objective

    def __call__(self, model: nn.Module, outputs: Any, batch: Any) -> torch.Tensor:
        loss = sum(self.objective(outputs, batch).values())
        return self.weight * fisher_penalty(trainable_weights(model), loss)
