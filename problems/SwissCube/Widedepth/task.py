"""SwissCube / Widedepth as an engine Task: data, network, loss, inference, evaluation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from problems.SwissCube import evaluation
from problems.SwissCube.dataset import SwissCube
from problems.SwissCube.generator import SPLIT_FILES, generate
from problems.SwissCube.tables import DEPTH
from problems.SwissCube.Widedepth.loss import WDRLoss
from problems.SwissCube.Widedepth.network import Widedepth, unwrap_public_state
from problems.SwissCube.Widedepth.postprocess import poses_from_outputs
from problems.SwissCube.Widedepth.preprocess import (Geometry, augmentation_matrix, normalize, targets,
                                                     warp)
from problems.SwissCube.Widedepth.quantize import GROUPS, SETS
from quantlab.engine.checkpoint import load_matching
from quantlab.engine.synthetic import prepare_synthetic
from quantlab.engine.task import Across, Batch, Task
from quantlab.errors import CheckpointError
from quantlab.metrics import pose
from quantlab.metrics.bootstrap import PerImage, Scored


class WidedepthDataset(Dataset):
    """One split, warped to the internal camera; training samples add augmentation and
    targets drawn from a generator seeded by (seed, epoch, index)."""

    def __init__(self, data: SwissCube, split: str, geo: Geometry, cfg: dict, train: bool) -> None:
        self.data, self.paths, self.geo, self.cfg, self.train = data, data.split(split), geo, cfg, train
        self.class_of = {obj: c for c, obj in enumerate(data.obj_ids)}
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        sample = self.data.load(self.paths[index], index)
        if not self.train:
            image, _ = warp(sample, self.geo, None, self.data.corners)
            return {"index": index, "image": normalize(image)}
        rng = np.random.default_rng([self.cfg["seed"], self.epoch, index])
        aug = self.cfg["input"]["augment"]
        M = augmentation_matrix(rng, self.geo.size, aug["shift"], aug["scale"], aug["rotation"])
        image, instances = warp(sample, self.geo, M, self.data.corners)
        loss = self.cfg["loss"]
        item = {"index": index, "image": normalize(image)}
        item.update(targets(instances, self.geo, self.data.corners, self.class_of,
                            loss["positive_num"], loss["positive_lambda"], rng))
        return item

    def ground_truth(self) -> list[dict]:
        """Poses of every sample in the internal camera (warping to it keeps the pose)."""
        out = []
        for index, path in enumerate(self.paths):
            _, instances = self.data.annotation(path)
            out.append({"index": index, "K": self.geo.K,
                        "instances": [{"obj_id": i.obj_id, "R": i.R, "t": i.t} for i in instances]})
        return out


class WidedepthTask(Task):
    best_metric = "ADI-0.1d/all"
    groups = GROUPS
    patterns = {**GROUPS, **SETS}
    reference_prefix = "model."
    published = yaml.safe_load((Path(__file__).with_name("published.yaml")).read_text())
    tables = (DEPTH,)

    def __init__(self, cfg: dict, data_root: Path) -> None:
        super().__init__(cfg, data_root)
        self.root = data_root / cfg["data"]["root"]
        self.geo = Geometry.from_config(cfg["network"], cfg["input"])
        centres, anchors, _ = self.geo.cells
        self.centres = torch.from_numpy(centres).float()
        self.anchors = torch.from_numpy(anchors).float()
        self._data: SwissCube | None = None
        self._loss: WDRLoss | None = None

    @property
    def data(self) -> SwissCube:
        if self._data is None:
            self._data = SwissCube(self.root)
        return self._data

    def prepare_data(self) -> str | None:
        return prepare_synthetic(self.cfg["data"]["synthetic"], self.root, self.root / SPLIT_FILES["train"],
                                 "SwissCube", generate)

    def dataset(self, split: str, train: bool) -> WidedepthDataset:
        return WidedepthDataset(self.data, split, self.geo, self.cfg, train)

    def collate(self, samples: list[dict]) -> Batch:
        batch: Batch = {"index": [s["index"] for s in samples],
                        "image": torch.stack([s["image"] for s in samples])}
        if "labels" in samples[0]:
            batch["labels"] = torch.stack([s["labels"] for s in samples])
            batch["owner"] = torch.stack([s["owner"] for s in samples])
            most = max(s["cam_corners"].shape[0] for s in samples)
            corners = torch.zeros(len(samples), most, 8, 3)
            for i, s in enumerate(samples):
                corners[i, :s["cam_corners"].shape[0]] = s["cam_corners"]
            batch["cam_corners"] = corners
        return batch

    def build_network(self) -> Widedepth:
        n = self.cfg["network"]
        return Widedepth(n["n_classes"], n["width"], n["depth"], n["fpn_channels"], n["head_convs"],
                         n["gn_groups"], n["prior"])

    def load_weights(self, model: torch.nn.Module, state: dict, source: str) -> dict[str, list[str]]:
        """A public WDR file: its anchors are re-derived here from network.strides and
        network.anchor_sizes (and must equal ours), its ImageNet classifier is unused."""
        state = unwrap_public_state(state)
        ours = self.geo.anchor_boxes()
        for level, box in enumerate(ours):
            theirs = state.get(f"anchor_generator.cell_anchors.{level}")
            if theirs is not None and not torch.allclose(theirs.reshape(-1).double(), torch.tensor(box, dtype=torch.float64)):
                raise CheckpointError(f"{source}: anchor_generator.cell_anchors.{level} is "
                                      f"{theirs.reshape(-1).tolist()}, the config derives {list(box)} "
                                      "(network.strides, network.anchor_sizes)")
        return load_matching(model, state, source, {
            "anchor_generator.": "re-derived from network.strides and network.anchor_sizes",
            "backbone.output.": "unused (DarkNet's ImageNet classifier)"})

    def forward(self, model: torch.nn.Module, batch: Batch):
        return model(batch["image"])

    def export_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"image": batch["image"]}

    def loss(self, outputs, batch: Batch, across: Across | None = None) -> dict[str, torch.Tensor]:
        """Sums over the batch's cells, as the reference code: nothing to average over ranks."""
        if self._loss is None:
            cfg = self.cfg["loss"]
            self._loss = WDRLoss(self.centres, self.anchors, torch.from_numpy(self.geo.K).float(),
                                 self.cfg["data"]["diameter"], cfg["focal_gamma"], cfg["focal_alpha"],
                                 cfg["weight_cls"], cfg["weight_reg"])
        return self._loss(outputs, batch)

    def predict(self, outputs, batch: Batch) -> list[dict]:
        ev = self.cfg["evaluation"]
        ids = self.data.obj_ids
        dets = poses_from_outputs(outputs, self.centres, self.anchors, self.geo.K,
                                  [self.data.corners[i] for i in ids], ids, ev["threshold"], ev["top_k"],
                                  ev["ransac_px"])
        return [{"index": i, "detections": d} for i, d in zip(batch["index"], dets)]

    def evaluate(self, predictions: list[dict], dataset: WidedepthDataset) -> Scored:
        return evaluation.evaluate(predictions, dataset.ground_truth(), self.data, self.cfg["data"]["diameter"])

    def resample(self, per_image: PerImage, weights: np.ndarray) -> dict[str, np.ndarray]:
        return pose.resample(per_image, weights)

    def report(self, metrics: dict[str, float], folder: Path) -> str:
        evaluation.plot_by_depth(metrics, folder / "accuracy_by_depth.png")
        return evaluation.table(metrics)
