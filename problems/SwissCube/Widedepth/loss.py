"""WDR loss: sigmoid focal classification + object-space keypoint regression."""
from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss


def flatten_levels(logits: list[torch.Tensor], poses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, h, w) per level -> (N, cells, C) and (N, cells, 16C), levels concatenated row-major."""
    def flat(maps: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
    return flat(logits), flat(poses)


def decode(pred: torch.Tensor, centres: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """16 offsets (8 dx then 8 dy, in anchor sizes from the cell centre) -> (..., 8, 2) pixels."""
    dx, dy = pred[..., :8], pred[..., 8:]
    x = dx * anchor[..., None] + centres[..., 0:1]
    y = dy * anchor[..., None] + centres[..., 1:2]
    return torch.stack([x, y], dim=-1)


def sigmoid_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Summed focal loss over cells with label >= 0 (label c > 0 is class c - 1)."""
    valid = labels >= 0
    logits, labels = logits[valid], labels[valid]
    target = F.one_hot(labels, logits.shape[-1] + 1)[:, 1:].to(logits.dtype)
    return sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="sum")


def object_space(points_2d: torch.Tensor, corners_cam: torch.Tensor, K_inv: torch.Tensor,
                 diameter: float, beta: float = 0.02) -> torch.Tensor:
    """Per-cell loss: each 2D keypoint's camera ray vs the true 3D corner.

    The true corner X is projected orthogonally onto the predicted ray b (P X = b b^T X /
    b^T b); the residual, in object diameters, goes through a smooth L1 (beta 0.02 d).
    """
    ones = torch.ones_like(points_2d[..., :1])
    rays = torch.cat([points_2d, ones], dim=-1) @ K_inv.T
    along = (rays * corners_cam).sum(-1, keepdim=True) / (rays * rays).sum(-1, keepdim=True)
    residual = (rays * along - corners_cam) / diameter
    return F.smooth_l1_loss(residual, torch.zeros_like(residual), reduction="none", beta=beta).mean(dim=(-1, -2))


class WDRLoss:
    """Both terms are sums over the batch's cells, as in the reference code."""

    def __init__(self, centres: torch.Tensor, anchors: torch.Tensor, K: torch.Tensor, diameter: float,
                 gamma: float, alpha: float, weight_cls: float, weight_reg: float) -> None:
        self.centres, self.anchors, self.K_inv = centres, anchors, torch.linalg.inv(K)
        self.diameter, self.gamma, self.alpha = diameter, gamma, alpha
        self.weight_cls, self.weight_reg = weight_cls, weight_reg

    def __call__(self, outputs, batch: dict) -> dict[str, torch.Tensor]:
        logits, poses = flatten_levels(*outputs)
        labels, owner = batch["labels"], batch["owner"]
        cls = sigmoid_focal(logits, labels, self.gamma, self.alpha)
        pos_img, pos_cell = torch.nonzero(labels > 0, as_tuple=True)
        if len(pos_img) == 0:
            reg = poses.sum() * 0.0
        else:
            cls_idx = labels[pos_img, pos_cell] - 1
            pred = poses[pos_img, pos_cell].view(-1, poses.shape[-1] // 16, 16)[torch.arange(len(cls_idx)), cls_idx]
            dev = pred.device
            pts = decode(pred, self.centres.to(dev)[pos_cell], self.anchors.to(dev)[pos_cell])
            target = batch["cam_corners"][pos_img, owner[pos_img, pos_cell]]
            reg = object_space(pts, target, self.K_inv.to(dev), self.diameter).sum()
        return {"cls": cls * self.weight_cls, "reg": reg * self.weight_reg}
