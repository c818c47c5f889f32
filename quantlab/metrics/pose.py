"""6D pose metrics: ADD, ADI (ADD-S), 2D reprojection error, accuracy by depth bin.

A missed detection has error +inf, so it fails at every threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

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


def depth_bin_edges(depths: np.ndarray, n_bins: int = 3) -> np.ndarray:
    """Equal-width bins between the minimum and maximum ground-truth depth."""
    return np.linspace(float(np.min(depths)), float(np.max(depths)), n_bins + 1)


def depth_bin_index(depths: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each depth; the maximum depth belongs to the last bin."""
    inner = edges[1:-1]
    return np.searchsorted(inner, np.asarray(depths), side="right")


@dataclass
class PoseRecord:
    """One ground-truth instance with its errors (inf when missed)."""
    depth: float
    add: float
    adi: float
    rep: float


def accuracy(errors: np.ndarray, threshold: float) -> float:
    """Percentage of errors strictly below `threshold` (nan for an empty set)."""
    errors = np.asarray(errors, dtype=float)
    return float(100.0 * np.mean(errors < threshold)) if errors.size else float("nan")


def summarize(records: list[PoseRecord], diameter: float,
              fractions: tuple[float, ...] = FRACTIONS,
              pixels: tuple[float, ...] = (2, 5, 10, 20),
              n_bins: int = 3) -> dict[str, float]:
    """Accuracy table: ADD/ADI below k diameters (error / diameter < k, the BOP toolkit's
    form, which differs from error < k x diameter at the boundary in floating point) and
    REP below p px, for all and per depth bin."""
    depth = np.array([r.depth for r in records])
    errors = {"ADD": np.array([r.add for r in records]), "ADI": np.array([r.adi for r in records]),
              "REP": np.array([r.rep for r in records])}
    edges = depth_bin_edges(depth, n_bins)
    names = BIN_NAMES if n_bins == 3 else tuple(f"bin{i}" for i in range(n_bins))
    groups = {"all": np.ones(len(records), bool)}
    bins = depth_bin_index(depth, edges)
    for i, name in enumerate(names):
        groups[name] = bins == i
    out: dict[str, float] = {}
    for group, sel in groups.items():
        out[f"count/{group}"] = int(sel.sum())
        for metric in ("ADD", "ADI"):
            for k in fractions:  # as the BOP toolkit compares: error / diameter < k
                out[f"{metric}-{k:g}d/{group}"] = accuracy(errors[metric][sel] / diameter, k)
        for p in pixels:
            out[f"REP-{p:g}px/{group}"] = accuracy(errors["REP"][sel], p)
    out["missed"] = int(np.sum(~np.isfinite(errors["ADD"])))
    for i, name in enumerate(names):
        out[f"depth_min/{name}"] = float(edges[i])
        out[f"depth_max/{name}"] = float(edges[i + 1])
    return out
