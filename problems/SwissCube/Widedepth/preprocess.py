"""From a SwissCube sample to the network's input and WDR training targets.

Every image is warped to the internal camera K (a homography K_int K_img^-1, which leaves
the pose unchanged). Training adds a random shift / scale / in-plane rotation about the
image centre; the pose that matches the warped image is re-solved by PnP from the warped
projections of the 3D box corners (the reference code's approach), since a 2D scale is not
exactly a rigid motion.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
import torch

from problems.SwissCube.dataset import Sample

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@dataclass
class Geometry:
    """The internal camera and the FPN cell layout over the network input."""
    size: int
    K: np.ndarray
    strides: tuple[int, ...]
    anchor_sizes: tuple[float, ...]

    @classmethod
    def from_config(cls, net_cfg: dict, input_cfg: dict) -> "Geometry":
        size = input_cfg["size"]
        K = np.asarray(input_cfg["internal_K"], float).reshape(3, 3) * np.array([[size / 512], [size / 512], [1]])
        return cls(size, K, tuple(net_cfg["strides"]), tuple(net_cfg["anchor_sizes"]))

    def anchor_boxes(self) -> list[tuple[float, float, float, float]]:
        """Each level's base anchor (x1, y1, x2, y2) as the official code builds it (from
        [1, 1, stride, stride] - 0.5, scaled to the anchor size about its centre) and its
        checkpoints store it (`anchor_generator.cell_anchors.<level>`)."""
        return [(s / 2 - (a - 1) / 2,) * 2 + (s / 2 + (a - 1) / 2,) * 2
                for s, a in zip(self.strides, self.anchor_sizes)]

    @cached_property
    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre (x, y), anchor size and level of every cell, levels concatenated row-major.

        As in the official decoder: the base anchor shifted by the cell's offset, centre
        (x1 + x2) / 2 = stride * i + stride / 2 and size x2 - x1 + 1."""
        centres, sizes, levels = [], [], []
        for level, (stride, (x1, _, x2, _)) in enumerate(zip(self.strides, self.anchor_boxes())):
            n = int(np.ceil(self.size / stride))
            ys, xs = np.mgrid[:n, :n]
            centres.append(np.stack([xs, ys], -1).reshape(-1, 2) * stride + (x1 + x2) / 2)
            sizes.append(np.full(n * n, x2 - x1 + 1, float))
            levels.append(np.full(n * n, level))
        return np.concatenate(centres), np.concatenate(sizes), np.concatenate(levels)


def augmentation_matrix(rng: np.random.Generator, size: int, shift: float, scale: float,
                        rotation: float) -> np.ndarray:
    """A 3x3 similarity: rotate and scale about the image centre, then shift."""
    angle = rng.uniform(-rotation, rotation)
    factor = 1 + rng.uniform(-scale, scale)
    dx, dy = rng.uniform(-shift, shift, 2) * size
    centre = ((size - 1) / 2, (size - 1) / 2)
    M = np.eye(3)
    M[:2] = cv2.getRotationMatrix2D(centre, angle, factor)
    M[:2, 2] += (dx, dy)
    return M


def solve_pose(points: np.ndarray, pixels: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose whose projection of `points` best matches `pixels` (EPnP, then LM refinement)."""
    ok, rvec, tvec = cv2.solvePnP(points, pixels, K, None, flags=cv2.SOLVEPNP_EPNP)
    ok, rvec, tvec = cv2.solvePnP(points, pixels, K, None, rvec, tvec, useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3)


def project(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    cam = points @ R.T + t
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:3]


def warp(sample: Sample, geo: Geometry, M: np.ndarray | None,
         corners: dict[int, np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    """Warp image and masks to the internal K (and by M); return image and instances."""
    H = geo.K @ np.linalg.inv(sample.K)
    if M is not None:
        H = M @ H
    size = (geo.size, geo.size)
    image = cv2.warpPerspective(sample.image, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    instances = []
    for inst in sample.instances:
        mask = cv2.warpPerspective(inst.mask.astype(np.uint8), H, size, flags=cv2.INTER_NEAREST) > 0
        R, t = inst.R, inst.t
        if M is not None:
            pts = corners[inst.obj_id]
            pix = project(pts, sample.K, R, t)
            pix = cv2.perspectiveTransform(pix[None].astype(np.float64), H)[0]
            R, t = solve_pose(pts, pix, geo.K)
        instances.append({"obj_id": inst.obj_id, "R": R, "t": t, "mask": mask})
    return image, instances


def normalize(image: np.ndarray) -> torch.Tensor:
    x = (image.astype(np.float32) / 255 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))


def targets(instances: list[dict], geo: Geometry, corners: dict[int, np.ndarray],
            class_of: dict[int, int], positive_num: int, positive_lambda: float,
            rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """WDR cell labels: per level, a number of positives that depends on how well the
    object's size matches the level's anchor size, drawn from the cells whose centre lies
    in the visible mask; other in-mask cells are ignored (-1); the rest are background (0).
    """
    centres, _, levels = geo.cells
    n_cells = len(centres)
    labels = np.zeros(n_cells, np.int64)
    owner = np.full(n_cells, -1, np.int64)
    cam_corners = np.zeros((max(1, len(instances)), 8, 3), np.float32)
    xy = np.clip(np.round(centres).astype(int), 0, geo.size - 1)
    in_any = np.zeros(n_cells, bool)
    anchors = np.asarray(geo.anchor_sizes)
    for i, inst in enumerate(instances):
        pts = corners[inst["obj_id"]]
        cam_corners[i] = pts @ inst["R"].T + inst["t"]
        inside = inst["mask"][xy[:, 1], xy[:, 0]]
        in_any |= inside
        if not inside.any():
            continue
        pix = project(pts, geo.K, inst["R"], inst["t"])
        span = max(np.ptp(pix[:, 0]), np.ptp(pix[:, 1]), 1.0)
        weight = np.exp(-positive_lambda * np.log2(span / anchors) ** 2)
        quota = (positive_num * weight / weight.sum() + 0.5).astype(int)
        for level, n in enumerate(quota):
            cand = np.nonzero(inside & (levels == level))[0]
            chosen = rng.permutation(cand)[:n]
            labels[chosen] = class_of[inst["obj_id"]] + 1
            owner[chosen] = i
    labels[in_any & (labels == 0)] = -1
    return {"labels": torch.from_numpy(labels), "owner": torch.from_numpy(owner),
            "cam_corners": torch.from_numpy(cam_corners)}
