"""COCO box mAP through pycocotools' COCOeval (101-point interpolation, IoU 0.50:0.05:0.95,
100 detections), plus AP per category and the critical-category mAP of papers.md B."""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

SUMMARY = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


def coco_index(dataset: dict) -> COCO:
    """A COCO object over an in-memory instances dict (no file, no prints)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate(detections: list[dict], ground_truth: COCO, critical: list[int]) -> dict[str, float]:
    """`detections`: [{image_id, category_id, bbox [x, y, w, h], score}] in original pixels.
    Returns percentages: the COCO summary (-1 where no ground truth falls in an area range,
    as COCOeval has it), `AP/<category name>` for every category with
    ground truth, and `critical_mAP` = the mean AP over the `critical` category ids."""
    names = {c["id"]: c["name"] for c in ground_truth.dataset["categories"]}
    images = sorted(ground_truth.getImgIds())
    metrics = {k: 0.0 for k in SUMMARY}
    per_category = {c: 0.0 for c in names if ground_truth.getAnnIds(catIds=[c], imgIds=images)}
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            found = ground_truth.loadRes(detections)
            coco_eval = COCOeval(ground_truth, found, "bbox")
            coco_eval.params.imgIds = images
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        metrics = {k: 100.0 * float(v) if v >= 0 else -1.0 for k, v in zip(SUMMARY, coco_eval.stats)}
        precision = coco_eval.eval["precision"]  # [IoU, recall, category, area, max dets]
        for k, cat in enumerate(coco_eval.params.catIds):
            if cat in per_category:
                valid = precision[:, :, k, 0, -1]
                valid = valid[valid > -1]
                per_category[cat] = 100.0 * float(valid.mean()) if valid.size else 0.0
    for cat, ap in per_category.items():
        metrics[f"AP/{names[cat]}"] = ap
    scored = [per_category[c] for c in critical if c in per_category]
    metrics["critical_mAP"] = float(np.mean(scored)) if scored else 0.0
    return metrics


def table(metrics: dict[str, float]) -> str:
    """The COCO summary, the critical-category mAP, then AP per category."""
    head = [f"{k:<14}{metrics[k]:6.1f}" for k in (*SUMMARY, "critical_mAP")]
    cats = [f"AP {k[3:]:<22}{v:6.1f}" for k, v in sorted(metrics.items()) if k.startswith("AP/")]
    return "\n".join(head + cats)
