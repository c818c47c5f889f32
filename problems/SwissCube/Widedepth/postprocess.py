"""WDR inference: confident cells -> 8 box corners each -> PnP RANSAC (EPnP) -> pose."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from problems.SwissCube.Widedepth.loss import decode, flatten_levels


def poses_from_outputs(outputs, centres: torch.Tensor, anchors: torch.Tensor, K: np.ndarray,
                       corners: list[np.ndarray], obj_ids: list[int], threshold: float, top_k: int,
                       ransac_px: float) -> list[list[dict]]:
    """Per image, at most one detection per class: its score is the best cell's, its pose
    comes from RANSAC over the keypoints of the top-k cells above the threshold."""
    logits, poses = flatten_levels(*outputs)
    scores = torch.sigmoid(logits).cpu()
    poses = poses.cpu()
    n_classes = scores.shape[-1]
    results = []
    for b in range(scores.shape[0]):
        dets = []
        for c in range(n_classes):
            s = scores[b, :, c]
            keep = torch.nonzero(s > threshold).flatten()
            if len(keep) == 0:
                continue
            keep = keep[torch.argsort(s[keep], descending=True)[:top_k]]
            pred = poses[b, keep].view(len(keep), n_classes, 16)[:, c]
            pix = decode(pred, centres[keep], anchors[keep]).reshape(-1, 2).numpy().astype(np.float64)
            pts = np.tile(corners[c], (len(keep), 1)).astype(np.float64)
            pose = solve_ransac(pts, pix, K, ransac_px)
            if pose is not None:
                dets.append({"obj_id": obj_ids[c], "score": float(s[keep[0]]), "R": pose[0], "t": pose[1]})
        results.append(dets)
    return results


def solve_ransac(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, ransac_px: float):
    """EPnP inside RANSAC (seeded, so evaluation is repeatable); None when it fails."""
    if len(points) < 4 or not np.isfinite(pixels).all():
        return None
    cv2.setRNGSeed(0)
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(points, pixels, K, None, reprojectionError=ransac_px,
                                                 iterationsCount=200, flags=cv2.SOLVEPNP_EPNP)
    if not ok or tvec[2, 0] <= 0:
        return None
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3)
