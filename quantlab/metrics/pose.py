"""6D pose metrics: ADD, ADI (ADD-S), 2D reprojection error, accuracy by depth bin.

A missed detection has error +inf, so it fails at every threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from quantlab.metrics.bootstrap import PerImage, Scored, rates

BIN_NAMES = ("near", "medium", "far")
#: the k of ADD / ADI below k x diameter that the tables report
FRACTIONS = (0.05, 0.1, 0.2, 0.5)


def transform(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    return points @ np.asarray(R).T + np.asarray(t).reshape(1, 3)


def add_error(points: np.ndarray, R_gt, t_gt, R_est, t_est) -> float:
    """Mean distance between corresponding model points under the two poses."""
    return float(np.linalg.norm(transform(points, R_gt, t_gt) - transform(points, R_est, t_est), axis=1).mean())


def adi_error(points: np.ndarray, R_gt, t_gt, R_est, t_est) -> float:
    """Mean over ground-truth-posed points of the distance to the nearest estimated point."""
    est = cKDTree(transform(points, R_est, t_est))
    dist, _ = est.query(transform(points, R_gt, t_gt), k=1)
    return float(dist.mean())


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    uvw = points_cam @ np.asarray(K).T
    return uvw[:, :2] / uvw[:, 2:3]


def rep_error(points: np.ndarray, K, R_gt, t_gt, R_est, t_est) -> float:
    """Mean 2D distance in pixels between the model points projected under both poses."""
    gt = project(transform(points, R_gt, t_gt), K)
    est = project(transform(points, R_est, t_est), K)
    return float(np.linalg.norm(gt - est, axis=1).mean())


#: what the official WDR evaluation (`evaluate.py`) adds to the maximum ground-truth depth
#: "for safe depth index computation", which also decides where an edge depth falls
DEPTH_MARGIN = 1e-5


def depth_bin_edges(depths: np.ndarray, n_bins: int = 3) -> np.ndarray:
    """Equal-width bins from the minimum to the maximum ground-truth depth plus
    DEPTH_MARGIN, as the official WDR evaluation draws them."""
    low, high = float(np.min(depths)), float(np.max(depths)) + DEPTH_MARGIN
    width = (high - low) / n_bins
    return np.array([low + i * width for i in range(n_bins)] + [high])


def depth_bin_index(depths: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each depth, `int((depth - min) / width)` as the official evaluation: a depth
    exactly on an inner edge of equal-width bins without the margin falls in the lower
    bin, since the margin widens every bin slightly."""
    width = (edges[-1] - edges[0]) / (len(edges) - 1)
    return ((np.asarray(depths, np.float64) - edges[0]) / width).astype(np.int64)


@dataclass
class PoseRecord:
    """One ground-truth instance with its errors (inf when missed) and its test image."""
    depth: float
    add: float
    adi: float
    rep: float
    image: int = 0


def accuracies(depth: np.ndarray, errors: dict[str, np.ndarray], diameter: float, weights: np.ndarray,
               fractions: tuple[float, ...] = FRACTIONS, pixels: tuple[float, ...] = (2, 5, 10, 20),
               n_bins: int = 3) -> dict[str, np.ndarray]:
    """ADD/ADI below k diameters (error / diameter < k, the BOP toolkit's form, which
    differs from error < k x diameter at the boundary in floating point) and REP below p
    px, for all instances and per depth bin, with each instance counted as often as
    `weights` [B, N] says (one row per bootstrap replicate). The bins are fixed by the
    depths of all instances, so a replicate scores the same depth ranges."""
    edges = depth_bin_edges(depth, n_bins)
    bins = depth_bin_index(depth, edges)
    groups = {"all": np.ones(len(depth), bool), **{name: bins == i for i, name in enumerate(bin_names(n_bins))}}
    out: dict[str, np.ndarray] = {}
    for group, sel in groups.items():
        weighted = weights * sel
        for metric in ("ADD", "ADI"):
            for k in fractions:
                out[f"{metric}-{k:g}d/{group}"] = rates(errors[metric] / diameter < k, weighted)
        for p in pixels:
            out[f"REP-{p:g}px/{group}"] = rates(errors["REP"] < p, weighted)
    return out


def bin_names(n_bins: int) -> tuple[str, ...]:
    return BIN_NAMES if n_bins == 3 else tuple(f"bin{i}" for i in range(n_bins))


def per_image(records: list[PoseRecord], images: list[int], diameter: float) -> PerImage:
    """The records as columns: `image` is the position of each instance's image in
    `images` (the split's images, instances or not), the order bootstrap weights follow."""
    position = {image: i for i, image in enumerate(images)}
    return {"images": np.asarray(images, dtype=np.int64),
            "image": np.array([position[r.image] for r in records], dtype=np.int64),
            "depth": np.array([r.depth for r in records], dtype=np.float64),
            "ADD": np.array([r.add for r in records], dtype=np.float64),
            "ADI": np.array([r.adi for r in records], dtype=np.float64),
            "REP": np.array([r.rep for r in records], dtype=np.float64),
            "diameter": np.float64(diameter)}


def resample(columns: PerImage, weights: np.ndarray) -> dict[str, np.ndarray]:
    """`accuracies` with each test image counted as `weights` [B, images] says."""
    errors = {k: columns[k] for k in ("ADD", "ADI", "REP")}
    return accuracies(columns["depth"], errors, float(columns["diameter"]), weights[:, columns["image"]])


def summarize(records: list[PoseRecord], diameter: float, images: list[int] | None = None) -> Scored:
    """The accuracy table (`resample` at unit weights: every instance once), instance
    counts, misses and bin edges, with the per-image results behind it (`images`: the
    split's images; default: those of the records)."""
    images = sorted({r.image for r in records}) if images is None else images
    columns = per_image(records, images, diameter)
    out: dict[str, float] = {k: float(v[0]) for k, v in resample(columns, np.ones((1, len(images)))).items()}
    edges = depth_bin_edges(columns["depth"], len(BIN_NAMES))
    bins = depth_bin_index(columns["depth"], edges)
    out["count/all"] = len(records)
    for i, name in enumerate(BIN_NAMES):
        out[f"count/{name}"] = int(np.sum(bins == i))
        out[f"depth_min/{name}"] = float(edges[i])
        out[f"depth_max/{name}"] = float(edges[i + 1])
    out["missed"] = int(np.sum(~np.isfinite(columns["ADD"])))
    return Scored(out, columns)
