"""ZebraPose inference (`CNN_output_to_pose.py:96-156`, `fba7b4d:test.py`): code + mask ->
2D-3D correspondences -> PnP RANSAC.

Every pixel of the predicted mask is a correspondence: its class id (bits with
sigmoid(logit) > 0.5 in float32, the official test: a logit in (0, 9e-8] has a sigmoid of
exactly 0.5 and is a 0; the first channel the most significant) gives the 3D class point (NaN points become the origin, the
pair is kept), its position maps back through the crop's final box with integer
truncation. The official solver, Progressive-X, is not installable here; we use the
official code's own fallback, OpenCV EPnP inside RANSAC (2 px, 150 iterations), seeded.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from problems.LINEMOD.codes import bits_to_ids

MIN_POINTS = 6


def correspondences(mask_logit: torch.Tensor, code_logit: torch.Tensor, class_points: np.ndarray,
                    box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(3D points [n,3], image pixels [n,2]) of one crop's outputs ([1,h,w], [bits,h,w])."""
    mask = (torch.sigmoid(mask_logit[0]) > 0.5).cpu().numpy()
    bits = (torch.sigmoid(code_logit) > 0.5).cpu().numpy()
    rows, cols = np.nonzero(mask)
    ids = bits_to_ids(bits[:, rows, cols].T)
    points = np.nan_to_num(class_points[ids], nan=0.0)
    x, y, w, h = box
    size_y, size_x = mask.shape
    pixels = np.stack([(cols * w / size_x + x).astype(np.int64), (rows * h / size_y + y).astype(np.int64)], axis=1)
    return points.astype(np.float64), pixels.astype(np.float64)


def solve_pose(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, threshold: float,
               iterations: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(R, t in mm) or None: too few pairs, no RANSAC model, or the object behind the camera."""
    if len(points) < MIN_POINTS:
        return None
    cv2.setRNGSeed(0)
    ok, rvec, tvec, _ = cv2.solvePnPRansac(points, pixels, np.asarray(K, np.float64), None,
                                           iterationsCount=iterations, reprojectionError=threshold,
                                           flags=cv2.SOLVEPNP_EPNP)
    if not ok or tvec[2, 0] <= 0:
        return None
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3)
