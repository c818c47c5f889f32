"""Integer weight codes of a graph's weights: a quantized layer's codes found again in a
weight that folding rescaled per channel, or 8-bit max-abs codes for a weight left float."""
from __future__ import annotations

import numpy as np


def fit_codes(weight: np.ndarray, codes: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes, positive scales) with weight == codes x scale along `axis`, when `weight` is
    `codes` times one factor per output channel (BatchNorm folded into a quantized layer),
    else None."""
    w = np.moveaxis(weight.astype(np.float64), axis, 0).reshape(weight.shape[axis], -1)
    k = np.moveaxis(codes.astype(np.float64), axis, 0).reshape(codes.shape[axis], -1)
    norm = (k * k).sum(1)
    scale = (w * k).sum(1) / np.where(norm > 0, norm, 1.0)
    residual = np.abs(w - k * scale[:, None]).max(1)
    if np.any(residual > 1e-4 * np.abs(w).max(1) + 1e-12):
        return None
    sign = np.where(scale < 0, -1, 1)
    shape = [1] * codes.ndim
    shape[axis] = -1
    flipped = (codes.astype(np.int16) * sign.reshape(shape)).astype(np.int8)
    return flipped, np.where(norm > 0, np.abs(scale), 1.0).astype(np.float32)


def max_abs_codes(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """8-bit symmetric codes and scales, per output channel (a weight QAT left float)."""
    w = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    scale = np.abs(w).max(1) / 127
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8), scale
