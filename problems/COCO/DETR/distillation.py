"""The output-sensitivity objective of Huang et al., Output Sensitivity-Aware DETR Quantization (section Multi-layer distillation objective): a distillation loss between a student
and its float teacher over every decoder layer's outputs, queries paired by index (no
matching, so the loss is smooth in the weights where the Hungarian loss is not).

    L_dis = sum over layers [ lambda_KL x KL(softmax(p_s / T) || softmax(p_t / T)) + ||b_s - b_t||_1 ]

KL is summed over classes and L1 over the 4 box coordinates; both are averaged over
queries and images (the paper does not say; a mean keeps the two terms batch-size free).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _layers(outputs: dict) -> list[dict]:
    return [*outputs.get("aux_outputs", []), outputs]


def distillation_loss(student: dict, teacher: dict, temperature: float = 6.0, kl_weight: float = 0.05
                      ) -> torch.Tensor:
    total = 0.0
    for s, t in zip(_layers(student), _layers(teacher), strict=True):
        log_s = F.log_softmax(s["pred_logits"] / temperature, -1)
        log_t = F.log_softmax(t["pred_logits"].detach() / temperature, -1)
        kl = (log_s.exp() * (log_s - log_t)).sum(-1).mean()
        l1 = (s["pred_boxes"] - t["pred_boxes"].detach()).abs().sum(-1).mean()
        total = total + kl_weight * kl + l1
    return total
