"""COCOeval.evaluate's per-image matches (pycocotools' `evaluateImg`), for all images at once.

pycocotools matches one (image, category, area range) at a time in Python loops: a minute
for val2017's 5000 images and 100 detections each, while the other ranks wait. The C++
evaluators (faster-coco-eval, detectron2's COCOeval_opt) keep these matches where Python
cannot read them, and the bootstrap intervals (resampling) are built from them. Here the
greedy matching runs for every (image, category) pair together, one detection rank at a
time, over the 10 IoU thresholds and 4 area ranges at once. The rules are
`COCOeval.evaluateImg`'s, and tests compare every array with pycocotools' on the same
detections:

- detections of a pair by score, highest first (stable: ties keep their order in the
  results list), at most maxDets[-1] of them; ground truth in annotation order, the
  ignored ones (crowd, or area outside the range) last;
- a detection takes, among the ground truth not yet matched at that threshold (crowd
  boxes always count as unmatched), the highest IoU >= min(t, 1 - 1e-10), ties going to
  the later box; ignored boxes only when no other box qualifies; the match ignores the
  detection when its box is ignored;
- an unmatched detection whose area (w h) is outside the range is ignored;
- IoU is pycocotools' `bbIou` in float64, the same operations in the same order; over a
  crowd box it is intersection / detection area.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Boxes:
    """Ground truth or detections as flat arrays, in the order COCOeval reads them."""
    image: np.ndarray      # image position (into the evaluated image ids)
    category: np.ndarray   # category position (into the evaluated category ids)
    bbox: np.ndarray       # [n, 4] x, y, w, h (float64)
    area: np.ndarray       # ground truth: the annotation's `area`; detections: w h
    crowd: np.ndarray      # bool; ground truth only (detections: all False)
    score: np.ndarray      # detections only (ground truth: zeros)
    ident: np.ndarray      # annotation ids (a match to id 0 counts as none, as in COCOeval)


@dataclass(frozen=True)
class Matches:
    """For each (category, area range, image) that has ground truth or detections, in
    COCOeval.evalImgs' order (categories, then area ranges, then images): its detections'
    rows (`dt_*`) and its ground truth's rows (`gt_*`), each in evaluateImg's order."""
    dt_category: np.ndarray
    dt_area: np.ndarray
    dt_image: np.ndarray
    dt_score: np.ndarray
    dt_matched: np.ndarray  # [rows, thresholds] bool
    dt_ignore: np.ndarray   # [rows, thresholds] bool
    gt_category: np.ndarray
    gt_area: np.ndarray
    gt_image: np.ndarray
    gt_ignore: np.ndarray


def empty_matches(thresholds: int) -> Matches:
    """No rows: an evaluation without detections (every metric is 0)."""
    none = np.zeros(0, dtype=np.int64)
    flags = np.zeros((0, thresholds), dtype=bool)
    return Matches(none, none, none, np.zeros(0), flags, flags, none, none, none, np.zeros(0, dtype=bool))


def ground_truth(coco: Any, images: list[int], categories: list[int]) -> Boxes:
    """The annotations of `images` and `categories` (pycocotools COCO) in the order COCOeval
    reads them (by image, then annotation order); crowd = `iscrowd`, COCOeval's `ignore`."""
    image_pos, category_pos = {i: k for k, i in enumerate(images)}, {c: k for k, c in enumerate(categories)}
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=images)) if a["category_id"] in category_pos]
    return Boxes(image=np.array([image_pos[a["image_id"]] for a in anns], dtype=np.int64),
                 category=np.array([category_pos[a["category_id"]] for a in anns], dtype=np.int64),
                 bbox=np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
                 area=np.array([a["area"] for a in anns], dtype=np.float64),
                 crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
                 score=np.zeros(len(anns)), ident=np.array([a["id"] for a in anns], dtype=np.int64))


def detections(results: list[dict], images: list[int], categories: list[int]) -> Boxes:
    """Detections [{image_id, category_id, bbox, score}] in list order, as COCO.loadRes makes
    them (area w h, ids from 1); those of other categories are not evaluated, as in COCOeval."""
    image_pos, category_pos = {i: k for k, i in enumerate(images)}, {c: k for k, c in enumerate(categories)}
    unknown = {d["image_id"] for d in results} - image_pos.keys()
    if unknown:
        raise ValueError(f"detections of images not in the ground truth: {sorted(unknown)[:5]}")
    kept = [(n, d) for n, d in enumerate(results) if d["category_id"] in category_pos]
    bbox = np.array([d["bbox"] for _, d in kept], dtype=np.float64).reshape(-1, 4)
    return Boxes(image=np.array([image_pos[d["image_id"]] for _, d in kept], dtype=np.int64),
                 category=np.array([category_pos[d["category_id"]] for _, d in kept], dtype=np.int64),
                 bbox=bbox, area=bbox[:, 2] * bbox[:, 3], crowd=np.zeros(len(kept), dtype=bool),
                 score=np.array([d["score"] for _, d in kept], dtype=np.float64),
                 ident=np.array([n + 1 for n, _ in kept], dtype=np.int64))


def iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' bbIou, broadcast: dt [..., 4] against gt [..., 4] (x, y, w, h)."""
    w = np.minimum(dt[..., 2] + dt[..., 0], gt[..., 2] + gt[..., 0]) - np.maximum(dt[..., 0], gt[..., 0])
    h = np.minimum(dt[..., 3] + dt[..., 1], gt[..., 3] + gt[..., 1]) - np.maximum(dt[..., 1], gt[..., 1])
    inter = w * h
    dt_area = dt[..., 2] * dt[..., 3]
    union = np.where(crowd, dt_area, dt_area + gt[..., 2] * gt[..., 3] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def _pairs(category: np.ndarray, image: np.ndarray, images: int) -> np.ndarray:
    return category.astype(np.int64) * images + image


def match(gt: Boxes, dt: Boxes, images: int, categories: int, thresholds: np.ndarray,
          area_ranges: np.ndarray, max_dets: int) -> Matches:
    """Every evaluateImg of COCOeval.evaluate over `images` x `categories` (positions)."""
    thresholds = np.minimum(thresholds, 1 - 1e-10)
    n_t, n_a = len(thresholds), len(area_ranges)
    # detections by pair, then score (highest first), stable; the first max_dets of each pair
    dt_pair = _pairs(dt.category, dt.image, images)
    order = np.lexsort((np.arange(len(dt_pair)), -dt.score, dt_pair))
    dt_pair = dt_pair[order]
    starts = np.flatnonzero(np.r_[True, dt_pair[1:] != dt_pair[:-1]]) if len(dt_pair) else np.zeros(0, np.int64)
    rank = np.arange(len(dt_pair)) - np.repeat(starts, np.diff(np.r_[starts, len(dt_pair)]))
    keep = order[rank < max_dets]
    dt_pair, rank = dt_pair[rank < max_dets], rank[rank < max_dets]
    # ground truth by pair, annotation order
    gt_pair = _pairs(gt.category, gt.image, images)
    gt_order = np.argsort(gt_pair, kind="stable")
    gt_pair_sorted = gt_pair[gt_order]
    pair_ids, gt_start, gt_count = np.unique(gt_pair_sorted, return_index=True, return_counts=True)
    # per area range: ignored ground truth (crowd, or area outside the range)
    low, high = area_ranges[:, 0], area_ranges[:, 1]
    gt_ignored = gt.crowd[:, None] | (gt.area[:, None] < low) | (gt.area[:, None] > high)  # [gt, areas]
    dt_outside = (dt.area[:, None] < low) | (dt.area[:, None] > high)                       # [dt, areas]
    matched = np.zeros((len(keep), n_t, n_a), dtype=bool)
    ignored = np.zeros((len(keep), n_t, n_a), dtype=bool)
    # each kept detection's pair among those with ground truth (-1: none, nothing to match)
    slot = np.searchsorted(pair_ids, dt_pair)
    found = slot < len(pair_ids)
    found[found] = pair_ids[slot[found]] == dt_pair[found]
    slot = np.where(found, slot, -1)
    # pairs in groups of similar ground-truth counts, each padded to its largest
    group = np.ceil(np.log2(np.maximum(gt_count, 1))).astype(np.int64)
    for g in np.unique(group):
        pairs = np.flatnonzero(group == g)
        rows = np.flatnonzero(found & np.isin(slot, pairs))
        if not len(rows):
            continue
        local = np.searchsorted(pairs, slot[rows])
        width = int(gt_count[pairs].max())
        column = np.arange(width)
        valid = column < gt_count[pairs][:, None]                                     # [pairs, width]
        index = gt_order[np.minimum(gt_start[pairs][:, None] + column, len(gt_order) - 1)]
        hit, best, best_ignored = _greedy(dt.bbox[keep[rows]], rank[rows], local, gt.bbox[index],
                                          gt.crowd[index] & valid, gt_ignored[index].transpose(0, 2, 1) & valid[:, None],
                                          valid, thresholds)
        matched[rows] = hit & (gt.ident[index[local[:, None, None], best]] != 0)
        ignored[rows] = hit & best_ignored
    ignored |= ~matched & dt_outside[keep][:, None, :]
    return _rows(gt, gt_pair, gt_ignored, dt_pair, dt.score[keep], matched, ignored, images, n_a)


def _greedy(dt_box: np.ndarray, rank: np.ndarray, pair: np.ndarray, gt_box: np.ndarray, crowd: np.ndarray,
            ignore: np.ndarray, valid: np.ndarray, thresholds: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """evaluateImg's greedy matching for detections `dt_box` of pairs `pair` (their positions
    into gt_box [pairs, width, 4], crowd and valid [pairs, width], ignore [pairs, areas,
    width]), one rank at a time: whether each matched at each threshold and area range, the
    ground-truth column it took, and whether that box is ignored."""
    n_t, n_a, width = len(thresholds), ignore.shape[1], gt_box.shape[1]
    hit = np.zeros((len(dt_box), n_t, n_a), dtype=bool)
    best = np.zeros((len(dt_box), n_t, n_a), dtype=np.int64)
    taken = np.zeros((len(gt_box), n_t, n_a, width), dtype=bool)
    for r in np.unique(rank):  # a pair's detections in score order: each sees the earlier ones' matches
        rows = np.flatnonzero(rank == r)
        p = pair[rows]
        overlap = iou(dt_box[rows][:, None, :], gt_box[p], crowd[p])[:, None, None, :]    # [rows, 1, 1, width]
        free = (~taken[p] | crowd[p][:, None, None, :]) & valid[p][:, None, None, :]
        above = free & (overlap >= thresholds[None, :, None, None])                       # [rows, t, a, width]
        ignored_box = ignore[p][:, None, :, :]
        regular = above & ~ignored_box
        use = np.where(regular.any(-1, keepdims=True), regular, above & ignored_box)
        # the last column holding the highest IoU: the loop takes a box on >=
        choice = width - 1 - np.argmax(np.where(use, overlap, -np.inf)[..., ::-1], axis=-1)
        hit[rows], best[rows] = use.any(-1), choice
        t_index, a_index = np.ogrid[:n_t, :n_a]
        taken[p[:, None, None], t_index, a_index, choice] |= hit[rows]
    picked = ignore[pair[:, None, None], np.arange(n_a)[None, None, :], best]
    return hit, best, hit & picked


def _rows(gt: Boxes, gt_pair: np.ndarray, gt_ignored: np.ndarray, dt_pair: np.ndarray, dt_score: np.ndarray,
          matched: np.ndarray, ignored: np.ndarray, images: int, n_a: int) -> Matches:
    """The rows in evalImgs' order: (category, area range, image), then detections by score
    and ground truth with the ignored last (stable)."""
    n_dt, n_gt = len(dt_pair), len(gt_pair)
    dt_pos = np.arange(n_dt)  # already by pair, then score
    a_dt = np.repeat(np.arange(n_a)[None, :], n_dt, 0).ravel()
    i_dt = np.repeat(dt_pos, n_a)
    dt_order = np.lexsort((i_dt, dt_pair[i_dt] % images, a_dt, dt_pair[i_dt] // images))
    i_dt, a_dt = i_dt[dt_order], a_dt[dt_order]
    a_gt = np.repeat(np.arange(n_a)[None, :], n_gt, 0).ravel()
    i_gt = np.repeat(np.arange(n_gt), n_a)
    ig = gt_ignored[i_gt, a_gt]
    gt_order = np.lexsort((i_gt, ig, gt_pair[i_gt] % images, a_gt, gt_pair[i_gt] // images))
    i_gt, a_gt, ig = i_gt[gt_order], a_gt[gt_order], ig[gt_order]
    return Matches(
        dt_category=dt_pair[i_dt] // images, dt_area=a_dt, dt_image=dt_pair[i_dt] % images,
        dt_score=dt_score[i_dt], dt_matched=matched[i_dt, :, a_dt], dt_ignore=ignored[i_dt, :, a_dt],
        gt_category=gt_pair[i_gt] // images, gt_area=a_gt, gt_image=gt_pair[i_gt] % images, gt_ignore=ig)
