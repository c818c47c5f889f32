"""The critical-category objective (Yang et al., Fisher-aware Quantization for DETR Detectors with Critical-category Objectives (2024), the logit-label transformation): keep the critical classes' logits and fold
every other real class into one "other" output; a trailing no-object logit stays last.

The fold is a logsumexp, so softmax over the folded logits is exactly the model's own
distribution with the non-critical classes' probabilities summed into "other" (a max
would not be a distribution over the same events). Labels follow the same map.
"""
from __future__ import annotations

import torch


def fold_logits(logits: torch.Tensor, critical: list[int], no_object: bool = True) -> torch.Tensor:
    """[..., C (+1)] -> [..., K + 1 (+1)]: critical classes in `critical` order, "other",
    then the no-object logit when the last column is one."""
    real = logits.shape[-1] - (1 if no_object else 0)
    keep = torch.as_tensor(critical, dtype=torch.long, device=logits.device)
    rest = torch.ones(real, dtype=torch.bool, device=logits.device)
    rest[keep] = False
    parts = [logits[..., keep], torch.logsumexp(logits[..., :real][..., rest], dim=-1, keepdim=True)]
    if no_object:
        parts.append(logits[..., real:])
    return torch.cat(parts, dim=-1)


def fold_labels(labels: torch.Tensor, critical: list[int], num_classes: int) -> torch.Tensor:
    """Class ids -> folded indices: critical i -> its position, any other real class -> K,
    the no-object id `num_classes` -> K + 1."""
    table = torch.full((num_classes + 1,), len(critical), dtype=torch.long)
    table[torch.as_tensor(critical, dtype=torch.long)] = torch.arange(len(critical))
    table[num_classes] = len(critical) + 1
    return table.to(labels.device)[labels]
