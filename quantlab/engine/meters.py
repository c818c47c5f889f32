"""Running means of loss terms over an epoch."""
from __future__ import annotations

import torch


class MeanMeter:
    """Accumulates named scalars weighted by batch size."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, terms: dict[str, torch.Tensor], n: int) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach()) * n
        self.count += n

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}
