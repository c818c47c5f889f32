"""DETR's PostProcess: softmax over the real classes (no-object dropped), each query's best
class and score, boxes in the original image's pixels as COCO [x, y, w, h]."""
from __future__ import annotations

import torch
from torchvision.ops import box_convert


@torch.no_grad()
def detections(outputs: dict, orig_sizes: list[torch.Tensor], image_ids: list[int]) -> list[list[dict]]:
    prob = outputs["pred_logits"].softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    boxes = box_convert(outputs["pred_boxes"], "cxcywh", "xywh")
    out = []
    for i, (size, image_id) in enumerate(zip(orig_sizes, image_ids)):
        h, w = (float(v) for v in size)
        scaled = (boxes[i] * torch.tensor([w, h, w, h], device=boxes.device)).cpu()
        out.append([{"image_id": int(image_id), "category_id": int(c), "bbox": [round(float(v), 3) for v in b],
                     "score": float(s)} for c, b, s in zip(labels[i].cpu(), scaled, scores[i].cpu())])
    return out
