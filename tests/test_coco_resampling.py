"""The image bootstrap of the COCO metrics against COCOeval itself: unit weights must give evaluate()'s numbers,
and weights w must give evaluate() on the data set that literally holds every image w times."""
from __future__ import annotations

import numpy as np
import pytest

from problems.COCO import resampling
from problems.COCO.evaluation import coco_index, evaluate, match, summarize
from problems.COCO.resampling import per_image, resample

CATEGORIES = [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}, {"id": 3, "name": "sign"},
              {"id": 4, "name": "crowd"}]
CRITICAL = [2, 4, 3]
N_IMAGES = 12
SMALL = (1, 4)  # the only images with small ground truth
SIGNS = (2, 9)  # the only images with signs
CROWD_ONLY = (5, 7)  # category 4 has crowd ground truth only, there
NO_GROUND_TRUTH, NO_DETECTIONS, CROWDED = 10, 11, 0  # image 0 has over 100 detections of cars
COUNTS = ("critical_categories", "undefined_categories")


def _box(rng: np.random.RandomState, low: float, high: float) -> list[float]:
    w, h = rng.uniform(low, high, size=2)
    return [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), float(w), float(h)]


def _jitter(rng: np.random.RandomState, box: list[float]) -> list[float]:
    x, y, w, h = box
    dx, dy, dw, dh = rng.normal(0, 0.12, size=4) * [w, h, w, h]
    return [x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0)]


def _synthetic() -> tuple[dict, list[dict]]:
    """Ground truth of every size class with crowd boxes, and detections: jittered hits, duplicates, detections
    on crowd regions, random false positives, continuous scores (ties only between copies)."""
    rng = np.random.RandomState(7)
    images, annotations, detections = [], [], []

    def add(image: int, category: int, box: list[float], crowd: int = 0) -> None:
        annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": category, "bbox": box,
                            "area": box[2] * box[3], "iscrowd": crowd})

    def detect(image: int, category: int, box: list[float], low: float, high: float) -> None:
        score = float(rng.uniform(low, high))
        detections.append({"image_id": image, "category_id": category, "bbox": box, "score": score})

    for image in range(1, N_IMAGES + 1):
        images.append({"id": image, "width": 640, "height": 480})
        i = image - 1
        if i == NO_GROUND_TRUTH:
            continue
        for category in (1, 2):
            for _ in range(rng.randint(1, 4)):
                add(image, category, _box(rng, 40, 90) if rng.uniform() < 0.5 else _box(rng, 100, 250))
        if i in SMALL:
            add(image, 1 + i % 2, _box(rng, 8, 28))
            add(image, 1, _box(rng, 10, 25))
        if i in SIGNS:
            add(image, 3, _box(rng, 30, 120))
        if i == 3:
            add(image, 2, _box(rng, 150, 250), crowd=1)
        if i in CROWD_ONLY:
            add(image, 4, _box(rng, 120, 250), crowd=1)
    for ann in annotations:
        if ann["image_id"] - 1 == NO_DETECTIONS:
            continue
        copies = 2 if ann["iscrowd"] else int(rng.choice([0, 1, 1, 1, 2]))
        for _ in range(max(copies, ann["category_id"] == 3)):
            detect(ann["image_id"], ann["category_id"], _jitter(rng, ann["bbox"]), 0.2, 1.0)
    for image in range(1, N_IMAGES + 1):
        if image - 1 != NO_DETECTIONS:
            for _ in range(3):
                detect(image, int(rng.randint(1, 5)), _box(rng, 10, 200), 0.0, 0.8)
    for _ in range(110):
        detect(CROWDED + 1, 1, _box(rng, 20, 150), 0.0, 0.4)
    dataset = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    return dataset, detections


def _duplicated(dataset: dict, detections: list[dict], weights: np.ndarray) -> tuple[dict, list[dict]]:
    """The data set holding image i weights[i] times, each copy with fresh image and annotation ids."""
    images, annotations, copies = [], [], []
    for image, count in zip(dataset["images"], weights.astype(int)):
        for _ in range(count):
            new = len(images) + 1
            images.append({**image, "id": new})
            for ann in dataset["annotations"]:
                if ann["image_id"] == image["id"]:
                    annotations.append({**ann, "id": len(annotations) + 1, "image_id": new})
            copies += [{**d, "image_id": new} for d in detections if d["image_id"] == image["id"]]
    return {"images": images, "annotations": annotations, "categories": dataset["categories"]}, copies


def _truth(dataset: dict, detections: list[dict]) -> dict[str, float]:
    """evaluate()'s AP metrics (loadRes writes into the detections: it gets copies)."""
    metrics = evaluate([dict(d) for d in detections], coco_index(dataset), CRITICAL)
    return {k: v for k, v in metrics.items() if k not in COUNTS}


def _assert_matches(resampled: dict[str, np.ndarray], row: int, truth: dict[str, float]) -> None:
    """Same keys, nan where evaluate() leaves a category out, the same numbers elsewhere."""
    assert set(truth) <= set(resampled)
    for key, values in resampled.items():
        if key in truth:
            assert values[row] == pytest.approx(truth[key], abs=1e-9), key
        else:
            assert key.startswith("AP/") and np.isnan(values[row]), key


@pytest.fixture(scope="module")
def synthetic() -> tuple[dict, list[dict], dict[str, np.ndarray]]:
    dataset, detections = _synthetic()
    coco = coco_index(dataset)
    return dataset, detections, per_image(match([dict(d) for d in detections], coco), coco, CRITICAL)


def test_per_image_is_flat_numeric_and_ordered(synthetic, tmp_path):
    _, _, arrays = synthetic
    assert arrays["images"].tolist() == list(range(1, N_IMAGES + 1)) and arrays["images"].dtype == np.int64
    assert all(a.dtype != object for a in arrays.values())
    assert arrays["category_names"].tolist() == ["car", "person", "sign", "crowd"]
    assert arrays["defined"].tolist() == [True, True, True, False]
    assert arrays["dt_matched"].shape == arrays["dt_ignore"].shape == (len(arrays["dt_score"]), 10)
    assert NO_DETECTIONS not in arrays["dt_image"]
    # maxDets: at most 100 detections of one category, area range and image
    rows = (arrays["dt_category"] == 0) & (arrays["dt_area"] == 0) & (arrays["dt_image"] == CROWDED)
    assert rows.sum() == 100
    np.savez(tmp_path / "per_image.npz", **arrays)
    with np.load(tmp_path / "per_image.npz") as loaded:
        again = resample(dict(loaded), np.ones((1, N_IMAGES)))
    for key, values in resample(arrays, np.ones((1, N_IMAGES))).items():
        np.testing.assert_array_equal(values, again[key])


def test_unit_weights_give_evaluate(synthetic):
    dataset, detections, arrays = synthetic
    truth = _truth(dataset, detections)
    resampled = resample(arrays, np.ones((1, N_IMAGES)))
    assert set(resampled) == set(truth)
    assert truth["APs"] > 0 and truth["AP50"] > truth["AP75"] > 0 and "AP/crowd" not in truth
    _assert_matches(resampled, 0, truth)


def test_one_match_serves_metrics_and_bootstrap(synthetic):
    """A task matches once: summarize and per_image on the same COCOeval give evaluate()'s numbers."""
    dataset, detections, arrays = synthetic
    coco = coco_index(dataset)
    matched = match([dict(d) for d in detections], coco)
    shared = per_image(matched, coco, CRITICAL)
    metrics = {k: v for k, v in summarize(matched, coco, CRITICAL).items() if k not in COUNTS}
    assert metrics == _truth(dataset, detections)
    for key, values in arrays.items():
        np.testing.assert_array_equal(shared[key], values, err_msg=key)


def test_weights_equal_duplicated_images(synthetic, monkeypatch):
    dataset, detections, arrays = synthetic
    rng = np.random.RandomState(3)
    weights = [np.ones(N_IMAGES), rng.multinomial(N_IMAGES, np.ones(N_IMAGES) / N_IMAGES),
               rng.randint(0, 4, size=N_IMAGES), np.array([2, 0, 1, 3, 0, 1, 2, 0, 1, 0, 1, 2])]
    no_small_no_sign = np.full(N_IMAGES, 2)
    no_small_no_sign[[*SMALL, *SIGNS]] = 0
    weights.append(no_small_no_sign)
    weights = np.stack(weights).astype(float)
    resampled = resample(arrays, weights)
    monkeypatch.setattr(resampling, "CHUNK", 1)  # one replicate per block
    blocked = resample(arrays, weights)
    for row, w in enumerate(weights):
        truth = _truth(*_duplicated(dataset, detections, w))
        _assert_matches(resampled, row, truth)
        _assert_matches(blocked, row, truth)
    assert resampled["APs"][-1] == -1.0 and np.isnan(resampled["AP/sign"][-1])
    assert resampled["critical_mAP"][-1] == pytest.approx(resampled["AP/person"][-1])


def test_no_detections_scores_zero(synthetic):
    dataset, _, _ = synthetic
    arrays = per_image(match([], coco_index(dataset)), coco_index(dataset), CRITICAL)
    truth = _truth(dataset, [])
    resampled = resample(arrays, np.ones((3, N_IMAGES)))
    assert set(resampled) == set(truth) and all(v == 0.0 for v in truth.values())
    for values in resampled.values():
        np.testing.assert_array_equal(values, np.zeros(3))


def test_weights_must_cover_every_image(synthetic):
    with pytest.raises(ValueError):
        resample(synthetic[2], np.ones((2, N_IMAGES - 1)))
