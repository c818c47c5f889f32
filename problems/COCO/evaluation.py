"""COCO box mAP through pycocotools' COCOeval (101-point interpolation, IoU 0.50:0.05:0.95,
100 detections), plus AP per category and the critical-category mAP of Yang et al., Fisher-aware Quantization for DETR Detectors with Critical-category Objectives (2024)."""
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


def match(detections: list[dict], ground_truth: COCO) -> COCOeval | None:
    """COCOeval after evaluate(), None without detections: its per-image matches are what both `summarize` and
    the bootstrap (resampling.per_image) read, so one evaluation matches once. loadRes writes into `detections`."""
    if not detections:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        coco_eval.params.imgIds = sorted(ground_truth.getImgIds())
        coco_eval.evaluate()
    return coco_eval


def evaluate(detections: list[dict], ground_truth: COCO, critical: list[int]) -> dict[str, float]:
    """`detections`: [{image_id, category_id, bbox [x, y, w, h], score}] in original pixels; see `summarize`."""
    return summarize(match(detections, ground_truth), ground_truth, critical)


def summarize(matched: COCOeval | None, ground_truth: COCO, critical: list[int]) -> dict[str, float]:
    """The metrics of `match`'s result, in percent: the COCO summary (-1 where no ground truth
    falls in an area range, as COCOeval has it), `AP/<category name>` for every category whose
    AP is defined, and `critical_mAP` = the mean AP over the defined ones of the `critical`
    category ids. Without detections every metric is 0.

    A category whose ground truth is all crowd has no AP (COCOeval ignores crowd boxes and
    marks its precision -1): it is left out, counted in `undefined_categories` (and the
    critical ones scored in `critical_categories`), never averaged in as 0."""
    names = {c["id"]: c["name"] for c in ground_truth.dataset["categories"]}
    images = sorted(ground_truth.getImgIds())
    present = {c for c in names if ground_truth.getAnnIds(catIds=[c], imgIds=images)}
    defined = {c for c in present if ground_truth.getAnnIds(catIds=[c], imgIds=images, iscrowd=False)}
    metrics = {k: 0.0 for k in SUMMARY}
    per_category = {c: 0.0 for c in sorted(defined)}
    if matched is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            matched.accumulate()
            matched.summarize()
        metrics = {k: 100.0 * float(v) if v >= 0 else -1.0 for k, v in zip(SUMMARY, matched.stats)}
        precision = matched.eval["precision"]  # [IoU, recall, category, area, max dets]
        for k, cat in enumerate(matched.params.catIds):
            if cat in per_category:
                valid = precision[:, :, k, 0, -1]
                per_category[cat] = 100.0 * float(valid[valid > -1].mean())
    for cat, ap in per_category.items():
        metrics[f"AP/{names[cat]}"] = ap
    scored = [per_category[c] for c in critical if c in per_category]
    metrics["critical_mAP"] = float(np.mean(scored)) if scored else 0.0
    metrics["critical_categories"] = len(scored)
    metrics["undefined_categories"] = len(present - defined)
    return metrics


def table(metrics: dict[str, float]) -> str:
    """The COCO summary, the critical-category mAP, then AP per category. A summary value
    COCOeval leaves undefined (-1: no ground truth in that area range) reads `n/a`."""
    head = [f"{k:<14}{metrics[k]:6.1f}" if metrics[k] >= 0 else f"{k:<14}{'n/a':>6}   (no ground truth in its range)"
            for k in (*SUMMARY, "critical_mAP")]
    head[-1] += f"   (over {metrics['critical_categories']} critical categories)"
    cats = [f"AP {k[3:]:<22}{v:6.1f}" for k, v in sorted(metrics.items()) if k.startswith("AP/")]
    if metrics["undefined_categories"]:
        cats.append(f"{metrics['undefined_categories']} categories with only crowd ground truth: AP undefined, "
                    "left out")
    return "\n".join(head + cats)
