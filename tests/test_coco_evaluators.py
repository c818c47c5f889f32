"""Our COCO evaluation (faster-coco-eval's metrics, `matching`'s per-image matches) against pycocotools'
COCOeval, the reference, on the same detections: every per-image array identical, every metric identical
but for the last bits of a float64."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from problems.COCO.evaluation import SUMMARY, coco_index, match, pycocotools_eval, summarize
from problems.COCO.resampling import per_image
from tests.test_coco_resampling import CRITICAL, _synthetic

ROWS = ("dt_category", "dt_area", "dt_image", "dt_score", "dt_matched", "dt_ignore",
        "gt_category", "gt_area", "gt_image", "gt_ignore")


def reference(dataset: dict, detections: list[dict]) -> tuple[COCOeval, dict[str, np.ndarray]]:
    """pycocotools' COCOeval after evaluate, accumulate and summarize, and its evalImgs as our rows."""
    ref = pycocotools_eval(coco_index(dataset), detections)
    p, images = ref.params, len(ref.params.imgIds)
    entries = [(n, e) for n, e in enumerate(ref.evalImgs) if e is not None]
    category, rest = np.divmod(np.array([n for n, _ in entries], dtype=np.int64), len(p.areaRng) * images)
    area, image = np.divmod(rest, images)
    n_dt, n_gt = [len(e["dtIds"]) for _, e in entries], [len(e["gtIds"]) for _, e in entries]
    no_rows = np.zeros((len(p.iouThrs), 0))
    rows = {"dt_category": np.repeat(category, n_dt), "dt_area": np.repeat(area, n_dt),
            "dt_image": np.repeat(image, n_dt),
            "dt_score": np.array([s for _, e in entries for s in e["dtScores"]], dtype=np.float64),
            "dt_matched": np.concatenate([no_rows, *(e["dtMatches"] for _, e in entries)], axis=1).T != 0,
            "dt_ignore": np.concatenate([no_rows, *(e["dtIgnore"] for _, e in entries)], axis=1).T.astype(bool),
            "gt_category": np.repeat(category, n_gt), "gt_area": np.repeat(area, n_gt),
            "gt_image": np.repeat(image, n_gt),
            "gt_ignore": np.concatenate([np.zeros(0), *(e["gtIgnore"] for _, e in entries)]).astype(bool)}
    return ref, rows


def crowded(seed: int, images: int = 60, categories: int = 6) -> tuple[dict, list[dict]]:
    """Many boxes per image and category (up to 40 ground truths, 150 detections), crowd boxes, score ties,
    areas exactly on the area ranges' bounds (32^2, 96^2), zero-size and out-of-image boxes, duplicated
    detections and ground truths, ground truth whose `area` is not w h, an annotation id 0, and detections of
    a category the ground truth does not have."""
    rng = np.random.RandomState(seed)
    annotations, detections = [], []
    for image in range(1, images + 1):
        for category in range(1, categories + 1):
            for _ in range(rng.randint(0, 40) if rng.uniform() < 0.3 else rng.randint(0, 4)):
                side = rng.choice([32.0, 96.0, rng.uniform(2, 300)])
                box = [float(rng.uniform(-20, 600)), float(rng.uniform(-20, 440)), side, float(rng.choice([side, 0.0,
                                                                                              rng.uniform(2, 200)]))]
                annotations.append({"id": len(annotations), "image_id": image, "category_id": category,
                                    "bbox": box, "area": box[2] * box[3] * rng.choice([1.0, 1.0, 0.5]),
                                    "iscrowd": int(rng.uniform() < 0.08)})
    # exact duplicates, the first of id 0: a detection's IoU ties between them, and evaluateImg takes the later
    annotations += [{**annotations[k], "id": len(annotations) + n} for n, k in enumerate(range(0, len(annotations), 9))]
    detections.append({**{k: annotations[0][k] for k in ("image_id", "category_id", "bbox")}, "score": 0.99})
    for ann in annotations:
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.15, 4) * [w + 1, h + 1, w + 1, h + 1]
            detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                               "bbox": [x + jitter[0], y + jitter[1], abs(w + jitter[2]), abs(h + jitter[3])],
                               "score": float(rng.choice([0.5, 0.25, rng.uniform()]))})
    for image in range(1, images + 1):
        for _ in range(rng.choice([5, 150])):
            w, h = rng.uniform(1, 200, 2)
            detections.append({"image_id": image, "category_id": int(rng.randint(1, categories + 2)),
                               "bbox": [float(rng.uniform(0, 600)), float(rng.uniform(0, 440)), float(w), float(h)],
                               "score": float(rng.choice([0.5, rng.uniform()]))})
    detections += [dict(d) for d in detections[::11]]  # exact duplicates: equal scores and boxes
    dataset = {"images": [{"id": i, "width": 640, "height": 480} for i in range(1, images + 1)],
               "annotations": annotations,
               "categories": [{"id": c, "name": f"c{c}"} for c in range(1, categories + 1)]}
    return dataset, detections


CASES = {"test_coco_resampling": _synthetic, "crowded_0": lambda: crowded(0), "crowded_1": lambda: crowded(1)}


@pytest.mark.filterwarnings("ignore:Found annotation id 0")  # crowded() holds one, on purpose
@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_and_per_image_matches_equal_pycocotools(case):
    dataset, detections = CASES[case]()
    ref, ref_rows = reference(dataset, detections)
    coco = coco_index(dataset)
    matched = match(detections, coco)
    metrics = summarize(matched, coco, CRITICAL)
    # pycocotools divides tp by tp + fp + np.spacing(1), faster-coco-eval by tp + fp: a precision of 1 is
    # 1 - 2.2e-16 in one and 1 in the other, and the means differ in their last bits, nowhere else
    assert [metrics[k] for k in SUMMARY] == pytest.approx([100.0 * v if v >= 0 else -1.0 for v in ref.stats[:6]],
                                                          rel=1e-13, abs=0)
    np.testing.assert_allclose(matched.scored.eval["precision"], ref.eval["precision"], rtol=1e-15, atol=0)
    ours = per_image(matched, coco, CRITICAL)
    assert ours["detections"] == len(detections)
    for key in ROWS:
        assert ours[key].dtype == ref_rows[key].dtype, key
        np.testing.assert_array_equal(ours[key], ref_rows[key], err_msg=key)
    # the cases reach what they are built for: matches ignored at some threshold, crowd
    # boxes matched, more than 100 detections in one (image, category)
    assert ours["dt_ignore"].any() and ours["dt_matched"].any() and ours["gt_ignore"].any()
