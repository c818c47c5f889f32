"""DETR's Hungarian matcher and set criterion (facebookresearch/detr `models/matcher.py`,
`models/detr.py`): class cost 1, L1 cost 5, GIoU cost 2; cross-entropy with no-object
weight 0.1 + 5 L1 + 2 GIoU, on the final and every auxiliary decoder output."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


def xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], cost_class: float = 1.0,
                    cost_bbox: float = 5.0, cost_giou: float = 2.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image, (query indices, target indices) of the minimum-cost assignment."""
    n, q = logits.shape[:2]
    prob = logits.flatten(0, 1).softmax(-1)
    flat = boxes.flatten(0, 1)
    labels = torch.cat([t["labels"] for t in targets])
    gt = torch.cat([t["boxes"] for t in targets])
    if len(labels) == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return [(empty, empty) for _ in targets]
    cost = (cost_bbox * torch.cdist(flat, gt, p=1) - cost_class * prob[:, labels]
            - cost_giou * generalized_box_iou(xyxy(flat), xyxy(gt)))
    cost = cost.view(n, q, -1).cpu()
    sizes = [len(t["labels"]) for t in targets]
    out = []
    for i, block in enumerate(cost.split(sizes, -1)):
        rows, cols = linear_sum_assignment(block[i].numpy())
        out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return out


class SetCriterion(nn.Module):
    """Loss terms `ce`, `bbox`, `giou` (weighted) summed over the final and auxiliary
    outputs; box terms are normalised by `num_boxes` (the caller averages it over ranks)."""

    def __init__(self, num_classes: int, eos_coef: float = 0.1, weights: dict | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weights = weights or {"ce": 1.0, "bbox": 5.0, "giou": 2.0}
        empty = torch.ones(num_classes + 1)
        empty[-1] = eos_coef
        self.register_buffer("empty_weight", empty)

    def single(self, out: dict, targets: list[dict], num_boxes: float) -> dict[str, torch.Tensor]:
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        indices = hungarian_match(logits, boxes, targets)
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        query = torch.cat([src for src, _ in indices])
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[batch, query] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        ce = F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight)
        src = boxes[batch, query]
        gt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(boxes.device)
        l1 = F.l1_loss(src, gt, reduction="sum") / num_boxes
        giou = (1 - torch.diag(generalized_box_iou(xyxy(src), xyxy(gt)))).sum() / num_boxes
        return {"ce": ce * self.weights["ce"], "bbox": l1 * self.weights["bbox"], "giou": giou * self.weights["giou"]}

    def forward(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, torch.Tensor]:
        terms = self.single(outputs, targets, num_boxes)
        for aux in outputs.get("aux_outputs", []):
            for k, v in self.single(aux, targets, num_boxes).items():
                terms[k] = terms[k] + v
        return terms
