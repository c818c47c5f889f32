"""COCO box mAP as pycocotools' COCOeval computes it (101-point interpolation, IoU 0.50:0.05:0.95,
100 detections), plus AP per category and the critical-category mAP of Yang et al., Fisher-aware Quantization for DETR Detectors with Critical-category Objectives (2024).

The metrics come from faster-coco-eval's C++ COCOeval and the per-image matches the bootstrap needs from
`matching` (which that evaluator keeps out of Python's reach), in a seventh of pycocotools' time
(benchmarks/coco_eval.py). Tests hold them against pycocotools on the same detections: the matches are
identical, the metrics agree to the last bits of a float64."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from faster_coco_eval import COCO as FastCOCO, COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from problems.COCO import matching

SUMMARY = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


def coco_index(dataset: dict) -> COCO:
    """A COCO object over an in-memory instances dict (no file, no prints)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@dataclass(frozen=True)
class Matched:
    """One evaluation's matching, read by both `summarize` and the bootstrap (resampling.per_image)."""
    scored: COCOeval_faster      # evaluated and accumulated
    matches: matching.Matches    # evaluateImg's per-image matches
    detections: int              # all detections given, before the 100 per image and category


def match(detections: list[dict], ground_truth: COCO) -> Matched | None:
    """COCOeval's evaluate and accumulate over every image of `ground_truth`, and its per-image
    matches; None without detections. `detections`: [{image_id, category_id, bbox [x, y, w, h], score}]."""
    if not detections:
        return None
    images, categories = sorted(ground_truth.getImgIds()), sorted(ground_truth.getCatIds())
    fast = FastCOCO(print_function=lambda *_: None)
    fast.dataset = ground_truth.dataset
    fast.createIndex()
    scored = COCOeval_faster(fast, fast.loadRes([dict(d) for d in detections]), "bbox",
                             print_function=lambda *_: None)
    scored.params.imgIds, scored.params.catIds = images, categories
    with contextlib.redirect_stdout(io.StringIO()):
        scored.evaluate()
        scored.accumulate()
    p = Params(iouType="bbox")  # the thresholds, area ranges and 100 detections of both
    matches = matching.match(matching.ground_truth(ground_truth, images, categories),
                             matching.detections(detections, images, categories), len(images), len(categories),
                             np.asarray(p.iouThrs, dtype=np.float64), np.asarray(p.areaRng, dtype=np.float64),
                             p.maxDets[-1])
    return Matched(scored, matches, len(detections))


def pycocotools_eval(ground_truth: COCO, detections: list[dict]) -> COCOeval:
    """pycocotools' own COCOeval after evaluate, accumulate and summarize over every image: the
    reference that tests and benchmarks/coco_eval.py hold `match` against."""
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(ground_truth, ground_truth.loadRes([dict(d) for d in detections]), "bbox")
        reference.params.imgIds = sorted(ground_truth.getImgIds())
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    return reference


def evaluate(detections: list[dict], ground_truth: COCO, critical: list[int]) -> dict[str, float]:
    """`detections`: [{image_id, category_id, bbox [x, y, w, h], score}] in original pixels; see `summarize`."""
    return summarize(match(detections, ground_truth), ground_truth, critical)


def annotated_categories(ground_truth: COCO) -> tuple[set[int], set[int]]:
    """The categories with ground truth in the evaluated images, and those with a box that is not crowd
    (the ones COCOeval gives an AP), in one pass over the annotations."""
    present, defined = set(), set()
    for ann in ground_truth.dataset["annotations"]:
        if ann["image_id"] in ground_truth.imgs and ann["category_id"] in ground_truth.cats:
            present.add(ann["category_id"])
            if not ann.get("iscrowd", 0):
                defined.add(ann["category_id"])
    return present, defined


def summarize(matched: Matched | None, ground_truth: COCO, critical: list[int]) -> dict[str, float]:
    """The metrics of `match`'s result, in percent: the COCO summary (-1 where no ground truth
    falls in an area range, as COCOeval has it), `AP/<category name>` for every category whose
    AP is defined, and `critical_mAP` = the mean AP over the defined ones of the `critical`
    category ids. Without detections every metric is 0.

    A category whose ground truth is all crowd has no AP (COCOeval ignores crowd boxes and
    marks its precision -1): it is left out, counted in `undefined_categories` (and the
    critical ones scored in `critical_categories`), never averaged in as 0."""
    names = {c["id"]: c["name"] for c in ground_truth.dataset["categories"]}
    present, defined = annotated_categories(ground_truth)
    metrics = {k: 0.0 for k in SUMMARY}
    per_category = {c: 0.0 for c in sorted(defined)}
    if matched is not None:
        scored = matched.scored
        precision = scored.eval["precision"]  # [IoU, recall, category, area, max dets]
        metrics = {k: 100.0 * v if v >= 0 else -1.0 for k, v in zip(SUMMARY, summary(precision))}
        for k, cat in enumerate(scored.params.catIds):
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


def summary(precision: np.ndarray) -> list[float]:
    """COCOeval.summarize's six AP figures from the accumulated precision [IoU, recall, category, area, max
    dets], computed as it computes them (the mean over the defined entries, -1 where none is): AP, AP at IoU
    0.50 and 0.75, then small, medium and large, at 100 detections. faster-coco-eval's own summary takes its
    means in another order."""
    thresholds = Params(iouType="bbox").iouThrs

    def mean(values: np.ndarray) -> float:
        defined = values[values > -1]
        return float(np.mean(defined)) if len(defined) else -1.0
    every = precision[..., -1]
    return [mean(every[..., 0]), mean(every[np.where(thresholds == 0.5)[0], ..., 0]),
            mean(every[np.where(thresholds == 0.75)[0], ..., 0]),
            *(mean(every[..., area]) for area in (1, 2, 3))]


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
