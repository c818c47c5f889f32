"""Bootstrap over test images for the COCO box metrics of evaluation.py. Matching a detection to a ground truth
depends on its own image only, so `per_image` keeps the per-image matches of the evaluation's one
matching (evaluation.match) as flat arrays; `resample` then redoes COCOeval.accumulate + summarize with
every image counted w times, for many weight vectors at once, instead of re-running COCOeval per replicate."""
from __future__ import annotations

from dataclasses import fields

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import Params

from problems.COCO.evaluation import SUMMARY, Matched, annotated_categories
from problems.COCO.matching import empty_matches

CHUNK = 2 ** 24  # float64 elements of one [replicates, detections] block (128 MiB): keeps memory bounded


def per_image(matched: Matched | None, ground_truth: COCO, critical: list[int]) -> dict[str, np.ndarray]:
    """evaluation.match's matches (IoU 0.50:0.05:0.95, 100 detections per image and category) as arrays that
    np.savez keeps. `dt_*` rows are detections and `gt_*` rows ground truths, one per (category, area range,
    image) entry of COCOeval.evalImgs and in its order, which `resample` relies on to break score ties as
    COCOeval does. Categories, area ranges and images are positions into `category_ids`, `area_ranges`,
    `images`; `defined` marks the categories whose AP evaluate() reports."""
    images = sorted(ground_truth.getImgIds())
    names = {c["id"]: c["name"] for c in ground_truth.dataset["categories"]}
    category_ids = sorted(ground_truth.getCatIds())
    params = Params(iouType="bbox")
    defined = annotated_categories(ground_truth)[1]
    rows = empty_matches(len(params.iouThrs)) if matched is None else matched.matches
    return {
        "images": np.array(images, dtype=np.int64),
        "category_ids": np.array(category_ids, dtype=np.int64),
        "category_names": np.array([names[c] for c in category_ids], dtype=str),
        "defined": np.array([c in defined for c in category_ids], dtype=bool),
        "critical": np.array(critical, dtype=np.int64),
        "detections": np.array(0 if matched is None else matched.detections, dtype=np.int64),
        "iou_thresholds": np.asarray(params.iouThrs, dtype=np.float64),
        "recall_thresholds": np.asarray(params.recThrs, dtype=np.float64),
        "area_ranges": np.asarray(params.areaRng, dtype=np.float64),
        **{f.name: getattr(rows, f.name) for f in fields(rows)},
    }


def resample(per_image: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """evaluate()'s AP metrics in percent, one per row of `weights` [B, images] (counts of each image, in the
    order of `per_image["images"]`): COCO summary (-1 where no ground truth counts), `AP/<name>` for the
    categories evaluate() reports (nan in a replicate without their ground truth) and `critical_mAP`."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.ndim != 2 or weights.shape[1] != len(per_image["images"]):
        raise ValueError(f"weights {weights.shape} do not match {len(per_image['images'])} images")
    names, ids = per_image["category_names"], per_image["category_ids"]
    reported = np.flatnonzero(per_image["defined"])
    if not per_image["detections"]:  # evaluate() scores every metric 0 without detections
        keys = (*SUMMARY, *(f"AP/{names[k]}" for k in reported), "critical_mAP")
        return {key: np.zeros(len(weights)) for key in keys}
    sums, defined = _precision_sums(per_image, weights)
    points = len(per_image["recall_thresholds"])

    def mean(area: int, iou: slice | list[int]) -> np.ndarray:
        """COCOeval.summarize: the mean precision over the categories defined in each replicate."""
        total = np.where(defined[:, :, area], sums[:, :, area, iou].sum(-1), 0.0).sum(1)
        count = defined[:, :, area].sum(1) * sums[:, :, area, iou].shape[-1] * points
        return np.where(count > 0, 100.0 * total / np.maximum(count, 1), -1.0)

    every = slice(None)
    stats = (mean(0, every), mean(0, [0]), mean(0, [5]), mean(1, every), mean(2, every), mean(3, every))
    metrics = dict(zip(SUMMARY, stats))  # IoU index 0 is 0.50 and 5 is 0.75; area ranges all, small, medium, large
    per_category = {k: np.where(defined[:, k, 0], 100.0 * sums[:, k, 0].sum(-1) / (sums.shape[-1] * points), np.nan)
                    for k in reported}
    for k, ap in per_category.items():
        metrics[f"AP/{names[k]}"] = ap
    position = {int(c): k for k, c in enumerate(ids)}
    scored = [per_category[position[c]] for c in per_image["critical"].tolist() if position.get(c) in per_category]
    scored = np.stack(scored, axis=1) if scored else np.full((len(weights), 0), np.nan)
    count = np.isfinite(scored).sum(1)
    metrics["critical_mAP"] = np.where(count > 0, np.nansum(scored, axis=1) / np.maximum(count, 1), 0.0)
    return metrics


def _precision_sums(per_image: dict[str, np.ndarray], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate with weighted counts: the sum over recall thresholds of the interpolated precision
    [B, category, area range, IoU threshold], and where it is defined (some ground truth counts) [B, category,
    area range]. The score order does not depend on the weights, so each (category, area range) sorts once."""
    n_category, n_area = len(per_image["category_ids"]), len(per_image["area_ranges"])
    n_iou = len(per_image["iou_thresholds"])
    group = per_image["dt_category"] * n_area + per_image["dt_area"]
    order = np.lexsort((-per_image["dt_score"], group))  # stable: ties keep COCOeval's concatenation order
    bounds = np.searchsorted(group[order], np.arange(n_category * n_area + 1))
    counted = np.zeros((weights.shape[1], n_category * n_area))
    gt_group = per_image["gt_category"] * n_area + per_image["gt_area"]
    np.add.at(counted, (per_image["gt_image"], gt_group), ~per_image["gt_ignore"])
    npig = weights @ counted  # weighted number of ground truths that count, [B, groups]
    sums = np.zeros((len(weights), n_category * n_area, n_iou))
    for g in np.flatnonzero(npig.any(0)):
        rows = order[bounds[g]:bounds[g + 1]]
        sums[:, g] = _group_sums(per_image["dt_image"][rows], per_image["dt_matched"][rows],
                                 per_image["dt_ignore"][rows], weights, npig[:, g], per_image["recall_thresholds"])
    shape = (len(weights), n_category, n_area)
    return sums.reshape(*shape, n_iou), (npig > 0).reshape(shape)


def _group_sums(image: np.ndarray, matched: np.ndarray, ignore: np.ndarray, weights: np.ndarray, npig: np.ndarray,
                thresholds: np.ndarray) -> np.ndarray:
    """[B, IoU thresholds] sums over `thresholds` of the interpolated precision of one (category, area range)
    whose detections are in score order. Only true positives raise recall and the precision envelope peaks
    on them, so they are the only points evaluated. A row of weight w acts as w copies in a row: with integer
    weights every sum is exact and this is COCOeval on the images repeated, unless different detections tie."""
    positive = matched & ~ignore
    counted = ~ignore
    always = counted.all(1)  # counted at every IoU threshold: summed once for all
    steady = np.flatnonzero(always)
    candidates = np.flatnonzero(positive.any(1))
    steady_before = np.searchsorted(steady, candidates, side="right")
    per_iou = []  # per IoU threshold: which candidates are true positives, the rows counted only there
    for t in range(matched.shape[1]):
        hit = positive[candidates, t]
        extra = np.flatnonzero(counted[:, t] & ~always)
        per_iou.append((hit, extra, np.searchsorted(extra, candidates[hit], side="right")))
    scale = np.where(npig > 0, npig, np.inf)  # a replicate without ground truth is left out later
    sums = np.zeros((len(weights), matched.shape[1]))
    step = max(1, CHUNK // max(len(image), 1))
    for start in range(0, len(weights), step):
        w = weights[start:start + step]
        steady_sum = _running(w, image[steady], steady_before)
        for t, (hit, extra, extra_before) in enumerate(per_iou):
            tp = _running(w, image[candidates[hit]], np.arange(1, hit.sum() + 1))
            seen = steady_sum[:, hit] + _running(w, image[extra], extra_before)  # tp + fp
            recall = tp / scale[start:start + step, None]
            precision = tp / (seen + np.spacing(1))
            envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            # COCOeval reads the envelope at np.searchsorted(recall, thresholds, "left"): point j serves the
            # thresholds in (recall[j - 1], recall[j]]; those past the last point read 0
            reached = np.searchsorted(thresholds, recall, side="right")
            sums[start:start + step, t] = (envelope * np.diff(reached, axis=1, prepend=0)).sum(1)
    return sums


def _running(weights: np.ndarray, columns: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B, len(counts)]: each replicate's sum of the weights of the first counts[j] entries of `columns`."""
    total = np.zeros((len(weights), len(columns) + 1))
    np.cumsum(weights[:, columns], axis=1, out=total[:, 1:])
    return total[:, counts]
