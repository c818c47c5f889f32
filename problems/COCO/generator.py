"""Synthetic COCO: flat shapes of distinct form and colour on textured backgrounds, written
in COCO's on-disk layout (`annotations/instances_{train,val}2017.json`, `train2017/`,
`val2017/` with 12-digit JPEG names), so the loader reads it exactly like the real set.

Boxes are the tight boxes of each shape's visible pixels, areas their visible pixel
counts, segmentations the outer contour polygons; objects overlap little (IoU <= 0.2).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from quantlab.progress import progress

SPLITS = ("train", "val")
#: COCO-style ids (1..90 with gaps are allowed); each id is one shape in one colour (BGR)
CATEGORIES = [
    {"id": 1, "name": "red disc", "shape": "disc", "color": [40, 40, 220]},
    {"id": 2, "name": "green square", "shape": "square", "color": [60, 190, 60]},
    {"id": 3, "name": "blue triangle", "shape": "triangle", "color": [220, 80, 40]},
    {"id": 5, "name": "yellow cross", "shape": "cross", "color": [40, 210, 230]},
    {"id": 7, "name": "magenta diamond", "shape": "diamond", "color": [200, 60, 200]},
    {"id": 9, "name": "white ring", "shape": "ring", "color": [235, 235, 235]},
]


def draw(shape: str, size: int) -> np.ndarray:
    """A size x size uint8 mask of the shape, centred."""
    mask = np.zeros((size, size), np.uint8)
    c, r = size / 2, size / 2 - 0.5
    if shape == "disc":
        cv2.circle(mask, (size // 2, size // 2), int(r), 1, -1)
    elif shape == "ring":
        cv2.circle(mask, (size // 2, size // 2), int(r), 1, -1)
        cv2.circle(mask, (size // 2, size // 2), int(r * 0.55), 0, -1)
    elif shape == "square":
        mask[:, :] = 1
    elif shape == "triangle":
        cv2.fillPoly(mask, [np.array([[c, 0], [size - 1, size - 1], [0, size - 1]], np.int32)], 1)
    elif shape == "diamond":
        cv2.fillPoly(mask, [np.array([[c, 0], [size - 1, c], [c, size - 1], [0, c]], np.int32)], 1)
    elif shape == "cross":
        t = max(1, size // 3)
        mask[:, (size - t) // 2:(size - t) // 2 + t] = 1
        mask[(size - t) // 2:(size - t) // 2 + t, :] = 1
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _iou(a: list[float], b: list[float]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(40, 140, 3)
    ramp = np.linspace(-30, 30, size)[:, None, None] * rng.uniform(-1, 1, 3)
    noise = rng.normal(0, 12, (size, size, 3))
    return np.clip(base + ramp + noise, 0, 255)


def render(rng: np.random.Generator, size: int, count: int, scale: tuple[float, float]
           ) -> tuple[np.ndarray, list[dict]]:
    """One image and its objects: category, mask-derived box, area, polygon."""
    image = background(rng, size)
    placed, objects = [], []
    for _ in range(count * 10):
        if len(objects) == count:
            break
        cat = CATEGORIES[rng.integers(len(CATEGORIES))]
        side = int(rng.uniform(*scale) * size)
        x, y = rng.integers(0, size - side + 1, 2)
        box = [float(x), float(y), float(side), float(side)]
        if any(_iou(box, other) > 0.2 for other in placed):
            continue
        placed.append(box)
        mask = np.zeros((size, size), np.uint8)
        mask[y:y + side, x:x + side] = draw(cat["shape"], side)
        objects.append({"category": cat, "mask": mask})
    for index, obj in enumerate(objects):  # later objects cover earlier ones
        shade = np.array(obj["category"]["color"], float) * rng.uniform(0.85, 1.0)
        image[obj["mask"] > 0] = shade
        for other in objects[index + 1:]:
            obj["mask"] = obj["mask"] & (1 - other["mask"])
    annotations = []
    for obj in objects:
        ys, xs = np.nonzero(obj["mask"])
        if len(xs) < 4:
            continue
        contours, _ = cv2.findContours(obj["mask"], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        annotations.append({"category_id": obj["category"]["id"], "area": float(len(xs)), "iscrowd": 0,
                            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                     float(ys.max() - ys.min() + 1)], "segmentation": polygons})
    return image.astype(np.uint8), annotations


def generate(root: Path, params: dict) -> str:
    """Write the synthetic set into `root`, a missing or empty folder; returns a summary."""
    rng = np.random.default_rng(params["seed"])
    size, low, high = params["image_size"], *params["objects_per_image"]
    categories = [{"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in CATEGORIES]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_id, annotation_id, total = 1, 1, 0
    for split in SPLITS:
        folder = root / f"{split}2017"
        folder.mkdir()
        images, annotations = [], []
        for _ in progress(range(params["images"][split]), desc=f"synthetic COCO {split}"):
            image, objects = render(rng, size, int(rng.integers(low, high + 1)), tuple(params["object_scale"]))
            name = f"{image_id:012d}.jpg"
            cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            for obj in objects:
                annotations.append({"id": annotation_id, "image_id": image_id, **obj})
                annotation_id += 1
            image_id += 1
        total += len(annotations)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(
            {"info": {"description": "quantlab synthetic COCO"}, "licenses": [], "images": images,
             "annotations": annotations, "categories": categories}))
    return (f"synthetic COCO in {root}: {params['images']['train']} train / {params['images']['val']} val "
            f"images, {total} objects of {len(CATEGORIES)} categories")
