"""COCO box evaluation of a val2017-size set: pycocotools' COCOeval against ours (faster-coco-eval's
metrics and `problems.COCO.matching`'s per-image matches), on the same detections, side by side.

    .venv/bin/python benchmarks/coco_eval.py [--images 5000] [--seed 0]

The set is synthetic with val2017's counts: 5000 images of 640 x 480, 80 categories, about 7.3
ground-truth boxes per image (1% crowd), and 100 detections per image as DETR gives them (each
ground-truth box found 1-3 times, jittered, 80% with its category, the rest false positives of
low score). Both sides do what a DETR evaluation does: the COCO metrics and the per-image
matches of the bootstrap. The script prints seconds for each and the largest difference of the
six summary metrics.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from problems.COCO.evaluation import SUMMARY, coco_index, match, pycocotools_eval, summarize  # noqa: E402
from problems.COCO.resampling import per_image  # noqa: E402

DETECTIONS_PER_IMAGE = 100


def val2017_like(images: int, seed: int, categories: int = 80) -> tuple[dict, list[dict]]:
    """Ground truth and detections with val2017's counts (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    annotations, detections = [], []
    for image in range(1, images + 1):
        found = 0
        for _ in range(rng.poisson(7.3)):
            w, h = rng.uniform(4, 300, 2)
            box = [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), float(w), float(h)]
            category = int(rng.integers(1, categories + 1))
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": category, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": int(rng.random() < 0.01)})
            for _ in range(int(rng.integers(1, 4))):
                if found == DETECTIONS_PER_IMAGE:
                    break
                jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
                label = category if rng.random() < 0.8 else int(rng.integers(1, categories + 1))
                detections.append({"image_id": image, "score": float(rng.random()), "category_id": label,
                                   "bbox": [box[0] + jitter[0], box[1] + jitter[1], max(1.0, w + jitter[2]),
                                            max(1.0, h + jitter[3])]})
                found += 1
        for _ in range(DETECTIONS_PER_IMAGE - found):
            w, h = rng.uniform(4, 300, 2)
            box = [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), float(w), float(h)]
            detections.append({"image_id": image, "category_id": int(rng.integers(1, categories + 1)), "bbox": box,
                               "score": float(rng.random() * 0.5)})
    dataset = {"images": [{"id": i, "width": 640, "height": 480} for i in range(1, images + 1)],
               "annotations": annotations, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, categories + 1)]}
    return dataset, detections


def pycocotools_side(dataset: dict, detections: list[dict]) -> tuple[list[float], float]:
    """COCOeval's summary (percent) and the seconds of loadRes + evaluate + accumulate + summarize, and of
    reading evalImgs' matches into arrays as the bootstrap needs them."""
    start = time.perf_counter()
    ref = pycocotools_eval(coco_index(dataset), detections)
    entries = [e for e in ref.evalImgs if e is not None]
    np.concatenate([e["dtMatches"] for e in entries], axis=1)
    np.concatenate([e["dtIgnore"] for e in entries], axis=1)
    return [100.0 * v if v >= 0 else -1.0 for v in ref.stats[:6]], time.perf_counter() - start


def our_side(dataset: dict, detections: list[dict]) -> tuple[list[float], float]:
    """Our summary (percent) and the seconds of evaluation.match + summarize + resampling.per_image."""
    start = time.perf_counter()
    coco = coco_index(dataset)
    matched = match(detections, coco)
    metrics = summarize(matched, coco, [])
    per_image(matched, coco, [])
    return [metrics[k] for k in SUMMARY], time.perf_counter() - start


def measure(images: int = 5000, seed: int = 0) -> dict:
    """Seconds of each side on one synthetic set, and how far apart their metrics are."""
    dataset, detections = val2017_like(images, seed)
    ours, ours_s = our_side(dataset, detections)
    ref, ref_s = pycocotools_side(dataset, detections)
    return {"images": images, "ground_truth": len(dataset["annotations"]), "detections": len(detections),
            "pycocotools_s": ref_s, "ours_s": ours_s, "speedup": ref_s / ours_s, "mAP": ours[0],
            "max_metric_difference": max(abs(a - b) for a, b in zip(ours, ref))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    r = measure(args.images, args.seed)
    print(f"{r['images']} images, {r['ground_truth']} ground-truth boxes, {r['detections']} detections")
    print(f"  pycocotools: {r['pycocotools_s']:6.1f} s   ours: {r['ours_s']:6.1f} s   ({r['speedup']:.1f}x)")
    print(f"  mAP {r['mAP']:.2f}; the six summary metrics differ by at most {r['max_metric_difference']:.1e}")


if __name__ == "__main__":
    main()
