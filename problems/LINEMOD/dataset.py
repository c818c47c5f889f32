"""A BOP dataset (LINEMOD / Occluded-LINEMOD) with the ZebraPose ground truth, read as the
official code reads it (ZebraPose `tools_for_BOP/bop_io.py`, the BOP toolkit's `inout.py`).

Per object: `models/models_info.json` (diameter, symmetries), `models/obj_%06d.ply` (every
vertex: the ADD/ADI points, not de-duplicated), `models_GT_color/Class_CorresPoint%06d.txt`
(class -> 3D point). Per split folder (`train_pbr`, `train_real`, `test`) and scene:
`scene_camera.json`, `scene_gt.json`, `scene_gt_info.json`, `rgb/` (png, else jpg),
`mask/` and `mask_visib/` (`%06d_%06d.png`, image and GT index), and the code images
`<split>_GT/<scene>/%06d_%06d.png` beside the split folder (24-bit ids; PNG only: JPEG
would change the ids). Every missing or malformed file is a one-line error naming it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from plyfile import PlyData

from problems.LINEMOD.codes import decode_code_image, read_class_points
from quantlab.errors import DataError

#: the LINEMOD objects by BOP id (BOP `dataset_params.py`: 15 models; LM-O uses 8 of them)
NAMES = {1: "ape", 2: "benchvise", 3: "bowl", 4: "camera", 5: "can", 6: "cat", 7: "cup", 8: "driller",
         9: "duck", 10: "eggbox", 11: "glue", 12: "holepuncher", 13: "iron", 14: "lamp", 15: "phone"}
IDS = {name: obj_id for obj_id, name in NAMES.items()}


@dataclass(frozen=True)
class Model:
    obj_id: int
    name: str
    points: np.ndarray          # every vertex of models/obj_*.ply, mm (ADD / ADI points)
    diameter: float             # mm, models_info.json
    symmetric: bool             # models_info.json has symmetries_discrete or _continuous
    class_points: np.ndarray    # [2^bits, 3] mm, NaN for a class without faces
    bits: int


@dataclass(frozen=True)
class Instance:
    """One ground-truth object in one image."""
    split: str
    scene: int
    image: int
    gt_index: int               # position in scene_gt's list: the mask and code file suffix
    obj_id: int
    R: np.ndarray
    t: np.ndarray               # mm
    K: np.ndarray
    bbox_visib: tuple[int, int, int, int]  # x, y, w, h
    visib_fract: float


def read_json(path: Path) -> dict | list:
    if not path.is_file():
        raise DataError(f"{path}: missing dataset file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc.msg}, line {exc.lineno})") from None


def read_points(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing dataset file")
    try:
        vertex = PlyData.read(str(path))["vertex"]
        return np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a PLY mesh with x, y, z vertices ({exc})") from None


def read_image(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing dataset file")
    image = cv2.imread(str(path), flags)
    if image is None:
        raise DataError(f"{path}: unreadable image")
    return image


class BOP:
    """The objects of one experiment in a BOP dataset folder, and their instances."""

    def __init__(self, root: Path, objects: list[str]) -> None:
        self.root = root
        unknown = [o for o in objects if o not in IDS]
        if unknown:
            raise DataError(f"data.objects: unknown LINEMOD object(s) {unknown} (known: {', '.join(IDS)})")
        info_file = root / "models" / "models_info.json"
        info = read_json(info_file)
        self.models: dict[int, Model] = {}
        for name in objects:
            obj_id = IDS[name]
            entry = info.get(str(obj_id))
            if not isinstance(entry, dict) or "diameter" not in entry:
                raise DataError(f"{info_file}: no entry with a diameter for object {obj_id} ({name})")
            points, bits = read_class_points(root / "models_GT_color" / f"Class_CorresPoint{obj_id:06d}.txt")
            self.models[obj_id] = Model(
                obj_id, name, read_points(root / "models" / f"obj_{obj_id:06d}.ply"), float(entry["diameter"]),
                bool(entry.get("symmetries_discrete") or entry.get("symmetries_continuous")), points, bits)
        widths = {m.bits for m in self.models.values()}
        if len(widths) > 1:
            raise DataError(f"{root / 'models_GT_color'}: the objects' codes have different bit counts {sorted(widths)}")
        self.bits = widths.pop()

    # instances -----------------------------------------------------------------------------
    def scenes(self, split: str) -> list[int]:
        folder = self.root / split
        if not folder.is_dir():
            raise DataError(f"{folder}: missing split folder")
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    @lru_cache(maxsize=None)
    def _scene(self, split: str, scene: int) -> tuple[dict, dict, dict]:
        folder = self.root / split / f"{scene:06d}"
        return tuple(read_json(folder / name) for name in ("scene_gt.json", "scene_gt_info.json",  # type: ignore[return-value]
                                                           "scene_camera.json"))

    @lru_cache(maxsize=None)
    def instances(self, split: str, min_visib: float) -> tuple[Instance, ...]:
        """Every instance of the experiment's objects with visib_fract > `min_visib` (the
        official filter: 0.2 for training, 0.1 for testing), by scene, image, GT index."""
        out = []
        for scene in self.scenes(split):
            gt, info, cams = self._scene(split, scene)
            folder = self.root / split / f"{scene:06d}"
            for key in sorted(gt, key=int):
                try:
                    K = np.asarray(cams[key]["cam_K"], float).reshape(3, 3)
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{folder / 'scene_camera.json'}: image {key} has no 3x3 cam_K") from None
                for n, ann in enumerate(gt[key]):
                    if ann.get("obj_id") not in self.models:
                        continue
                    try:
                        meta = info[key][n]
                        R = np.asarray(ann["cam_R_m2c"], float).reshape(3, 3)
                        t = np.asarray(ann["cam_t_m2c"], float).reshape(3)
                        box = tuple(int(v) for v in meta["bbox_visib"])
                        visib = float(meta["visib_fract"])
                    except (KeyError, IndexError, TypeError, ValueError) as exc:
                        raise DataError(f"{folder}: image {key}, GT {n}: scene_gt / scene_gt_info entry "
                                        f"malformed ({type(exc).__name__}: {exc})") from None
                    if visib > min_visib:
                        out.append(Instance(split, scene, int(key), n, int(ann["obj_id"]), R, t, K, box, visib))
        return tuple(out)

    # files of one instance -----------------------------------------------------------------
    def image(self, inst: Instance) -> np.ndarray:
        """The image as OpenCV reads it (BGR uint8): rgb/ as png, else jpg (train_pbr)."""
        folder = self.root / inst.split / f"{inst.scene:06d}" / "rgb"
        path = folder / f"{inst.image:06d}.png"
        return read_image(path if path.is_file() else folder / f"{inst.image:06d}.jpg", cv2.IMREAD_COLOR)

    def mask(self, inst: Instance, kind: str = "mask_visib") -> np.ndarray:
        """`mask_visib` (the visible part, the training target) or `mask` (all of it), bool."""
        path = self.root / inst.split / f"{inst.scene:06d}" / kind / f"{inst.image:06d}_{inst.gt_index:06d}.png"
        return read_image(path, cv2.IMREAD_GRAYSCALE) > 127

    def codes(self, inst: Instance) -> np.ndarray:
        """The instance's class id per pixel from `<split>_GT/` (0 = background or class 0)."""
        folder = self.root / f"{inst.split}_GT" / f"{inst.scene:06d}"
        path = folder / f"{inst.image:06d}_{inst.gt_index:06d}.png"
        if not path.is_file() and path.with_suffix(".jpg").is_file():
            raise DataError(f"{path.with_suffix('.jpg')}: code images must be PNG (JPEG changes the class ids)")
        return decode_code_image(read_image(path, cv2.IMREAD_COLOR))


def read_detections(path: Path) -> dict[tuple[int, int], list[dict]]:
    """A detection file in the GDR-Net format: {"scene/image": [{obj_id, bbox_est [x, y, w,
    h], score}]} (ZebraPose `get_detection_results.py`), keyed (scene, image)."""
    data = read_json(path)
    out = {}
    try:
        for key, dets in data.items():
            scene, image = (int(v) for v in key.split("/"))
            out[(scene, image)] = [{"obj_id": int(d["obj_id"]), "bbox": [float(v) for v in d["bbox_est"]],
                                    "score": float(d["score"])} for d in dets]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a detection file {{\"scene/image\": [{{obj_id, bbox_est, score}}]}} "
                        f"({type(exc).__name__}: {exc})") from None
    return out


def best_detection(detections: dict, inst: Instance) -> tuple[int, int, int, int] | None:
    """The highest-scoring detection of the instance's object in its image (score >= 0),
    cast to int as the official code does; None when the detector missed it."""
    mine = [d for d in detections.get((inst.scene, inst.image), []) if d["obj_id"] == inst.obj_id and d["score"] >= 0]
    if not mine:
        return None
    return tuple(int(v) for v in max(mine, key=lambda d: d["score"])["bbox"])  # type: ignore[return-value]
