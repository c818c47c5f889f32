"""Reader for the SwissCube on-disk layout (the real dataset, unchanged, or our synthetic one).

    <root>/training.txt | validation.txt | testing.txt   one `<seq>/rgb/<id>.<ext>` per line
    <root>/<seq>/scene_camera.json    {im_id: {"cam_K": [9]}}
    <root>/<seq>/scene_gt.json        {im_id: [{"cam_R_m2c": [9], "cam_t_m2c": [3], "obj_id"}]}
    <root>/<seq>/mask_visib/<id>_<%06d instance>.png
    <root>/models/obj_<id>.ply, <root>/swisscube_bbox.json (8 corners per class)
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from problems.SwissCube.generator import SPLIT_FILES
from problems.SwissCube.mesh import Mesh, read_ply
from quantlab.errors import DataError


@dataclass
class Instance:
    obj_id: int
    R: np.ndarray      # (3, 3) model-to-camera rotation
    t: np.ndarray      # (3,) translation, mm
    mask: np.ndarray | None  # (H, W) bool, visible pixels (None until the image is loaded)
    number: int = 0          # instance number in scene_gt, names its mask file


@dataclass
class Sample:
    index: int
    path: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    K: np.ndarray      # (3, 3)
    instances: list[Instance]


def _problem(exc: Exception) -> str:
    """What was wrong with an annotation entry, in words."""
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    return f"malformed entry ({exc})"


class SwissCube:
    """The dataset root: object models, 3D boxes and the split lists."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._require(root / "models")
        plys = sorted((root / "models").glob("obj_*.ply"))
        if not plys:
            raise DataError(f"{root / 'models'}: no obj_*.ply model found")
        self.obj_ids = [int(re.findall(r"\d+", p.stem)[0]) for p in plys]
        self.meshes: dict[int, Mesh] = {i: read_ply(p) for i, p in zip(self.obj_ids, plys)}
        bbox_file = self._require(root / "swisscube_bbox.json")
        boxes = json.loads(bbox_file.read_text())
        if len(boxes) != len(plys) or any(np.asarray(b).shape != (8, 3) for b in boxes):
            raise DataError(f"{bbox_file}: expected {len(plys)} lists of 8 (x, y, z) corners")
        # classes follow the sorted model files, as in the WDR code
        self.corners = {i: np.asarray(b, float) for i, b in zip(self.obj_ids, boxes)}

    @staticmethod
    def _require(path: Path) -> Path:
        if not path.exists():
            raise DataError(f"{path}: missing dataset file")
        return path

    def split(self, name: str) -> list[str]:
        if name not in SPLIT_FILES:
            raise DataError(f"unknown split '{name}' (expected one of {', '.join(SPLIT_FILES)})")
        listing = self._require(self.root / SPLIT_FILES[name])
        paths = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if not paths:
            raise DataError(f"{listing}: the {name} split lists no image")
        return paths

    @lru_cache(maxsize=None)
    def _scene(self, seq: str) -> tuple[dict, dict]:
        folder = self.root / seq
        gt_file = self._require(folder / "scene_gt.json")
        cam_file = self._require(folder / "scene_camera.json")
        try:
            return json.loads(gt_file.read_text()), json.loads(cam_file.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{folder}: malformed scene json ({exc})")

    def _locate(self, rel_path: str) -> tuple[str, int, str]:
        parts = Path(rel_path).parts
        if len(parts) < 3 or parts[-2] != "rgb":
            raise DataError(f"{rel_path}: expected <seq>/rgb/<id>.<ext> in the split file")
        seq = str(Path(*parts[:-2]))
        im_id = int(Path(parts[-1]).stem)
        gt, cams = self._scene(seq)
        key = next((k for k in (str(im_id), f"{im_id:06d}") if k in gt and k in cams), None)
        if key is None:
            raise DataError(f"{self.root / seq}: no annotation for image {im_id}")
        return seq, im_id, key

    def annotation(self, rel_path: str) -> tuple[np.ndarray, list[Instance]]:
        """Camera and instance poses of one image (masks not read)."""
        seq, _, key = self._locate(rel_path)
        return self._annotation(seq, key)

    def _annotation(self, seq: str, key: str) -> tuple[np.ndarray, list[Instance]]:
        gt, cams = self._scene(seq)
        try:
            instances = [Instance(int(a["obj_id"]), np.asarray(a["cam_R_m2c"], float).reshape(3, 3),
                                  np.asarray(a["cam_t_m2c"], float).reshape(3), None, n)
                         for n, a in enumerate(gt[key]) if a["obj_id"] in self.meshes]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{self.root / seq / 'scene_gt.json'}: image {key}: {_problem(exc)}") from None
        try:
            return np.asarray(cams[key]["cam_K"], float).reshape(3, 3), instances
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{self.root / seq / 'scene_camera.json'}: image {key}: {_problem(exc)}") from None

    def load(self, rel_path: str, index: int) -> Sample:
        """Image (RGB), camera and instances with their visible masks."""
        seq, im_id, key = self._locate(rel_path)
        K, instances = self._annotation(seq, key)
        image = cv2.imread(str(self._require(self.root / rel_path)), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{self.root / rel_path}: unreadable image")
        for inst in instances:
            mask_file = self._require(self.root / seq / "mask_visib" / f"{im_id:06d}_{inst.number:06d}.png")
            mask = cv2.imread(str(mask_file), cv2.IMREAD_UNCHANGED)
            if mask is None or mask.shape[:2] != image.shape[:2]:
                raise DataError(f"{mask_file}: unreadable or not the image's size")
            inst.mask = mask > 127
        return Sample(index, rel_path, image[..., ::-1].copy(), K, instances)
