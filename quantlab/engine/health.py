"""Is a model fit to be saved? A diverged model can have a finite loss and finite weights
(1e9 after one huge step) and still compute only NaN: the weights and one forward pass on
a fixed sample are checked before every checkpoint."""
from __future__ import annotations

from typing import Any, Callable

import torch


def non_finite_tensor(model: torch.nn.Module) -> str | None:
    """The qualified name of the first parameter or buffer that holds a NaN or an infinity
    where none belongs (a buffer a module lists in `nan_marks`, such as INQ's
    `weight_frozen`, uses NaN to mark entries and may hold NaN, never an infinity)."""
    for prefix, module in model.named_modules():
        marks = getattr(module, "nan_marks", ())
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if not tensor.is_floating_point():
                continue
            ok = bool((~torch.isinf(tensor)).all()) if name in marks else bool(torch.isfinite(tensor).all())
            if not ok:
                return f"{prefix}.{name}" if prefix else name
    return None


def all_finite(value: Any) -> bool:
    """Whether every floating tensor in a (nested) network output is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v) for v in value)
    return True


@torch.no_grad()
def diverged(model: torch.nn.Module, forward: Callable[[torch.nn.Module], Any]) -> str | None:
    """Why `model` must not be saved, or None: the first non-finite parameter, or non-finite
    outputs of `forward(model)` in eval mode (naming the largest weight)."""
    named = list(model.named_parameters())
    bad = next((n for n, p in named if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        return f"parameter '{bad}' is not finite"
    training = model.training
    model.eval()
    try:
        finite = all_finite(forward(model))
    finally:
        model.train(training)
    if finite:
        return None
    size, name = max(((float(p.abs().max()), n) for n, p in named if p.numel()), default=(0.0, "-"))
    return f"its outputs on an evaluation sample are not finite (largest weight {size:.3g} in '{name}')"
