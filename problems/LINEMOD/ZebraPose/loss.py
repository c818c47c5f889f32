"""ZebraPose's loss (`model/BinaryCodeNet.py`, `train.py:250-263`) for one object network.

The code loss is BCE on the code logits multiplied by the *predicted* visible mask
(thresholded, detached), each bit weighted by exp(gain x min(H, peak - H)) of an EMA H of
that bit's error rate inside the predicted mask: half-learned bits weigh most. The mask
loss is L1 between sigmoid(mask) and `mask_visib`. H is training state: it lives in the
network's `code_error_hist` buffer (NaN = not yet set), so checkpoints, resumes and the
ranks' broadcasts carry it; only a training step (train mode with gradients) moves it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class LossWeights:
    code: float = 3.0       # binary_loss_weight
    mask: float = 1.0
    momentum: float = 0.95  # H <- (1 - momentum) h + momentum H
    gain: float = 3.0
    peak: float = 0.51


def bit_weights(hist: torch.Tensor, gain: float, peak: float) -> torch.Tensor:
    return torch.exp(gain * torch.minimum(hist, peak - hist))


def object_loss(mask_logit: torch.Tensor, code_logit: torch.Tensor, mask_gt: torch.Tensor, code_gt: torch.Tensor,
                hist: torch.Tensor, update: bool, w: LossWeights) -> dict[str, torch.Tensor]:
    """`mask_logit` [B,1,h,w], `code_logit` and `code_gt` [B,bits,h,w], `mask_gt` [B,h,w];
    `hist` the network's error-histogram buffer, moved in place when `update`."""
    predicted = (torch.sigmoid(mask_logit) > 0.5).float().detach()
    with torch.no_grad():
        errors = (torch.round(torch.sigmoid(code_logit)) - code_gt).abs() * predicted
        rate = errors.sum(dim=(0, 2, 3)) / (predicted.sum() + 1)
        current = rate if bool(torch.isnan(hist).any()) else (1 - w.momentum) * rate + w.momentum * hist
        if update:
            hist.copy_(current)
        weights = bit_weights(current, w.gain, w.peak)
    bce = F.binary_cross_entropy_with_logits(predicted * code_logit, code_gt, reduction="none").mean(dim=(0, 2, 3))
    code = (weights * bce).sum() / weights.sum()
    mask = (torch.sigmoid(mask_logit[:, 0]) - mask_gt).abs().mean()
    return {"code": w.code * code, "mask": w.mask * mask}
