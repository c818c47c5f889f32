"""COCO / DETR as an engine Task: data, network, set criterion, post-processing, COCO mAP."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from problems.COCO import evaluation, resampling
from problems.COCO.dataset import CocoDetection, annotation_file, collate, load_coco
from problems.COCO.DETR.critical import fold_labels, fold_logits
from problems.COCO.DETR.distillation import distillation_loss
from problems.COCO.DETR.loss import SetCriterion
from problems.COCO.DETR.network import DETR
from problems.COCO.DETR.postprocess import detections
from problems.COCO.DETR.quantize import GROUPS, SETS
from problems.COCO.DETR.tables import TABLES
from problems.COCO.generator import generate
from quantlab.engine.checkpoint import load_matching
from quantlab.engine.synthetic import prepare_synthetic
from quantlab.engine.task import Across, Batch, Task
from quantlab.errors import ConfigError
from quantlab.metrics.bootstrap import PerImage, Scored

SPLITS = {"train": "train", "test": "val", "val": "val"}


#: the name under which the box count is averaged over ranks (`Task.loss_counts`)
NUM_BOXES = "detr.num_boxes"


def box_count(labels: list[torch.Tensor]) -> float:
    """The target boxes of this rank's batch."""
    return float(sum(len(l) for l in labels))


def num_boxes(targets: list[dict], across: Across | None) -> float:
    """What the box terms are normalised by: the batch's target boxes, averaged over the
    ranks of a training step as DETR's criterion all-reduces them, at least 1."""
    count = box_count([t["labels"] for t in targets])
    return max(1.0, across(count, NUM_BOXES) if across is not None else count)


class SeededCoco(CocoDetection):
    """Training augmentation drawn from a generator seeded by (seed, epoch, index), so a
    resumed run sees exactly the samples an uninterrupted one would."""

    def __init__(self, *args, seed: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
            return super().__getitem__(index)


class DETRTask(Task):
    best_metric = "mAP"
    critical_metric = "critical_mAP"
    groups = GROUPS
    patterns = {**GROUPS, **SETS}
    tables = TABLES
    published = yaml.safe_load((Path(__file__).with_name("published.yaml")).read_text())

    def __init__(self, cfg: dict, data_root: Path) -> None:
        super().__init__(cfg, data_root)
        self.root = data_root / cfg["data"]["root"]
        self._coco: dict = {}
        self._criterion: SetCriterion | None = None
        self._critical: SetCriterion | None = None

    def prepare_data(self) -> str | None:
        return prepare_synthetic(self.cfg["data"]["synthetic"], self.root, annotation_file(self.root, "train"),
                                 "COCO", generate)

    def coco(self, split: str):
        name = SPLITS[split]
        if name not in self._coco:
            self._coco[name] = load_coco(self.root, name)
        return self._coco[name]

    def dataset(self, split: str, train: bool) -> CocoDetection:
        return SeededCoco(self.root, SPLITS[split], self.cfg, train, self.coco(split), seed=self.cfg["seed"])

    def collate(self, samples: list[dict]) -> Batch:
        return collate(samples)

    def build_network(self) -> DETR:
        return DETR(**self.cfg["network"])

    def load_weights(self, model: torch.nn.Module, state: dict, source: str) -> dict[str, list[str]]:
        """The official layout: {"model": state_dict} (a training checkpoint adds the
        optimizer, scheduler, epoch and args, which are not read), or the state_dict."""
        return load_matching(model, state.get("model", state), source)

    def forward(self, model: torch.nn.Module, batch: Batch):
        return model(batch["image"], batch["mask"])

    def export_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"image": batch["image"], "mask": batch["mask"]}

    def targets(self, batch: Batch, device: torch.device) -> list[dict]:
        return [{"labels": l.to(device), "boxes": b.to(device)} for l, b in zip(batch["labels"], batch["boxes"])]

    def loss_counts(self, batch: Batch) -> dict[str, float]:
        return {NUM_BOXES: box_count(batch["labels"])}

    def loss(self, outputs, batch: Batch, across: Across | None = None) -> dict[str, torch.Tensor]:
        if self._criterion is None:
            loss = self.cfg["loss"]
            self._criterion = SetCriterion(self.cfg["network"]["num_classes"], loss["eos_coef"],
                                           {"ce": loss["ce"], "bbox": loss["bbox"], "giou": loss["giou"]})
        device = outputs["pred_logits"].device
        targets = self.targets(batch, device)
        return self._criterion.to(device)(outputs, targets, num_boxes(targets, across))

    def critical_loss(self, outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """The set loss on folded outputs: critical classes, "other", no-object
        (critical.py), matched and weighted like the overall loss."""
        critical = self.cfg["evaluation"]["critical"]
        if not critical:
            raise ConfigError("config key 'evaluation.critical': the critical objective needs category ids")
        if self._critical is None:
            loss = self.cfg["loss"]
            self._critical = SetCriterion(len(critical) + 1, loss["eos_coef"],
                                          {"ce": loss["ce"], "bbox": loss["bbox"], "giou": loss["giou"]})

        def fold(out: dict) -> dict:
            return {"pred_logits": fold_logits(out["pred_logits"], critical), "pred_boxes": out["pred_boxes"]}
        device = outputs["pred_logits"].device
        folded = {**fold(outputs), "aux_outputs": [fold(a) for a in outputs.get("aux_outputs", [])]}
        targets = [{"labels": fold_labels(t["labels"], critical, self.cfg["network"]["num_classes"]),
                    "boxes": t["boxes"]} for t in self.targets(batch, device)]
        return self._critical.to(device)(folded, targets, num_boxes(targets, None))

    def distillation_loss(self, student: dict, teacher: dict) -> torch.Tensor:
        """The output-sensitivity objective (Huang et al., section Multi-layer distillation objective) over every decoder layer."""
        loss = self.cfg["loss"]
        return distillation_loss(student, teacher, loss["distill_temperature"], loss["distill_kl_weight"])

    def balanced_sample(self, count: int, seed: int) -> list[int]:
        """Training images picked round-robin over the categories (each turn, the next
        unused image, in a seeded order, that holds the category), so every category is
        about equally represented."""
        coco = self.coco("train")
        ids = sorted(coco.imgs)
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
        holders = {c: [i for i in order if coco.getAnnIds(imgIds=[ids[i]], catIds=[c], iscrowd=False)]
                   for c in sorted(coco.cats)}
        chosen: list[int] = []
        taken: set[int] = set()
        while len(chosen) < count and any(holders.values()):
            for c, queue in holders.items():
                while queue and queue[0] in taken:
                    queue.pop(0)
                if queue and len(chosen) < count:
                    taken.add(queue[0])
                    chosen.append(queue.pop(0))
        return chosen

    def predict(self, outputs, batch: Batch) -> list[dict]:
        found = detections(outputs, batch["orig_size"], batch["image_id"])
        return [{"index": i, "detections": d} for i, d in zip(batch["index"], found)]

    def evaluate(self, predictions: list[dict], dataset: CocoDetection) -> Scored:
        """COCOeval's metrics, and its per-image matches for the bootstrap (`resampling`)."""
        flat, critical = [d for p in predictions for d in p["detections"]], self.cfg["evaluation"]["critical"]
        matched = evaluation.match(flat, dataset.coco)
        return Scored(evaluation.summarize(matched, dataset.coco, critical),
                      resampling.per_image(matched, dataset.coco, critical))

    def resample(self, per_image: PerImage, weights: np.ndarray) -> dict[str, np.ndarray]:
        return resampling.resample(per_image, weights)

    def report(self, metrics: dict[str, float], folder: Path) -> str:
        return evaluation.table(metrics)
