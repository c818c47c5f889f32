"""Bootstrap intervals over test images.

An evaluation keeps its per-image results (`PerImage`: numeric columns, with `images` the
test images in the order the weights follow), and the task recomputes every metric when
each image counts w_i times (`resample`). A replicate draws n images with replacement
(multinomial counts); the 2.5th and 97.5th percentiles of a metric over the replicates are
its 95% interval (the percentile bootstrap). Two evaluations of the same images scored
with the same draws give paired replicates: the interval of their difference then holds
the test set's images fixed, and only the methods' disagreements widen it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

PerImage = dict[str, np.ndarray]
#: the file beside an evaluation's metrics.json that holds its per-image results
PER_IMAGE = "per_image.npz"
#: the key of metrics.json that holds the SHA-256 of the per_image.npz written with it
DIGEST_KEY = "per_image_sha256"


class Scored(NamedTuple):
    """What a task's evaluation returns: the metrics and the per-image results behind them."""
    metrics: dict[str, float]
    per_image: PerImage


def draws(n_images: int, replicates: int, seed: int) -> np.ndarray:
    """[replicates, n_images] counts: how often each image is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=replicates).astype(np.float64)


def interval(replicates: np.ndarray, level: float) -> tuple[float, float] | None:
    """The percentile interval at `level` (e.g. 0.95) of a metric's replicates; replicates
    where the metric is undefined (nan: e.g. no instance of a category drawn) are left
    out, and None when every one is."""
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def rates(passed: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Percentage of weighted rows that pass, per replicate: `passed` [N] (bool), `weights`
    [B, N]; nan where a replicate weighs no row."""
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * (weights @ passed.astype(np.float64)) / total, np.nan)
