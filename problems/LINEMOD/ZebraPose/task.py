"""ZebraPose on LINEMOD / Occluded-LINEMOD as an engine Task.

One network per object, as the official code trains them, held in one model under the
objects' names: parameters are disjoint and Adam is element-wise, so a step on the sum of
the per-object losses is each official run's step, and one experiment yields the mean
over objects that T-A6 reports, under one bit plan. A training item holds one crop of
every object; an evaluation item is one test instance, run through its object's network.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from problems.LINEMOD import evaluation
from problems.LINEMOD.codes import ids_to_bits
from problems.LINEMOD.dataset import BOP, Instance, best_detection, read_detections
from problems.LINEMOD.generator import generate
from problems.LINEMOD.tables import OBJECTS
from problems.LINEMOD.ZebraPose.loss import LossWeights, object_loss
from problems.LINEMOD.ZebraPose.network import ZebraPoseNet, official_state
from problems.LINEMOD.ZebraPose.postprocess import correspondences, solve_pose
from problems.LINEMOD.ZebraPose.preprocess import color_augment, crop, final_box, jitter_box, normalize, pad_box
from problems.LINEMOD.ZebraPose.quantize import GROUPS, SETS
from quantlab.engine.checkpoint import load_matching
from quantlab.engine.synthetic import prepare_synthetic
from quantlab.engine.task import Across, Batch, Task
from quantlab.errors import CheckpointError, DataError
from quantlab.metrics.bootstrap import PerImage, Scored

ALIASES = "aliases of net.resnet.resnet_layer_* (the official network registers its encoder twice; checked equal)"


class PerObject(nn.ModuleDict):
    """The object networks by name. Called directly (ONNX export) it runs every network on
    the same crops and returns (mask, code) per object, in the config's order."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for net in self.values() for t in net(image))


class ObjectOutput(NamedTuple):
    mask: torch.Tensor   # [n, 1, h, w] logits
    code: torch.Tensor   # [n, bits, h, w] logits, first channel the most significant bit
    net: ZebraPoseNet    # holds the loss's error histogram


class Crops:
    """Cropping one instance as the config says: image at `input.size`, targets at half."""

    def __init__(self, data: BOP, cfg: dict) -> None:
        self.data, self.inp = data, cfg["input"]

    def image(self, image: np.ndarray, box) -> tuple[torch.Tensor, tuple]:
        """The normalised crop of the padded `box` and the final box it covers (for PnP)."""
        final = final_box(box, self.inp["resize"], image.shape[:2])
        return normalize(crop(image, box, self.inp["resize"], self.inp["size"], cv2.INTER_LINEAR)), final

    def targets(self, inst: Instance, box) -> tuple[torch.Tensor, torch.Tensor]:
        size, method = self.inp["size"] // 2, self.inp["resize"]
        mask = crop(self.data.mask(inst).astype(np.uint8), box, method, size, cv2.INTER_NEAREST)
        ids = crop(self.data.codes(inst).astype(np.int32), box, method, size, cv2.INTER_NEAREST)
        code = ids_to_bits(ids, self.data.bits).transpose(2, 0, 1)
        return torch.from_numpy(mask.astype(np.float32)), torch.from_numpy(code.astype(np.float32))


class TrainCrops(Dataset):
    """`data.crops_per_epoch` items a (virtual) epoch; item i of epoch e draws, for every
    object, a source split by `data.train_sources` and an instance from (seed, e, i)."""

    def __init__(self, data: BOP, cfg: dict) -> None:
        self.data, self.cfg, self.crops, self.epoch = data, cfg, Crops(data, cfg), 0
        sources = cfg["data"]["train_sources"]
        self.splits = list(sources)
        self.weights = np.array([sources[s] for s in self.splits], float) / sum(sources.values())
        pools = {s: data.instances(s, cfg["data"]["train_visib"]) for s in self.splits}
        self.pools = {obj: [[i for i in pools[s] if i.obj_id == obj] for s in self.splits] for obj in data.models}
        for obj, lists in self.pools.items():
            for split, pool in zip(self.splits, lists):
                if not pool:
                    raise DataError(f"{data.root / split}: no instance of object {obj} "
                                    f"({data.models[obj].name}) with visib_fract > {cfg['data']['train_visib']}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.cfg["data"]["crops_per_epoch"]

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.cfg["seed"], self.epoch, index])
        inp, items = self.cfg["input"], []
        for obj, lists in self.pools.items():
            pool = lists[int(rng.choice(len(lists), p=self.weights))]
            inst = pool[int(rng.integers(len(pool)))]
            image = color_augment(self.data.image(inst), rng, inp["color_p"])
            box = jitter_box(inst.bbox_visib, rng, inp["box_scale"], inp["box_shift"], inp["padding"])
            tensor, _ = self.crops.image(image, box)
            mask, code = self.crops.targets(inst, box)
            items.append({"obj": self.data.models[obj].name, "image": tensor, "mask": mask, "code": code})
        return {"index": index, "items": items}


class TestCrops(Dataset):
    """Every instance of the split with visib_fract > `data.test_visib`; the crop is the
    detection's box (`data.detections`) or the GT visible box, padded. A missed detection
    is an item without a box: it counts as a failure."""

    def __init__(self, data: BOP, cfg: dict, split: str) -> None:
        self.data, self.cfg, self.crops = data, cfg, Crops(data, cfg)
        self.instances = list(data.instances(split, cfg["data"]["test_visib"]))
        detections = cfg["data"]["detections"]
        self.detections = read_detections(data.root / detections) if detections else None

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> dict:
        inst = self.instances[index]
        box = inst.bbox_visib if self.detections is None else best_detection(self.detections, inst)
        item = {"index": index, "obj": self.data.models[inst.obj_id].name, "K": inst.K}
        size = self.cfg["input"]["size"]
        if box is None:
            return {**item, "image": torch.zeros(3, size, size), "box": None}
        tensor, final = self.crops.image(self.data.image(inst), pad_box(box, self.cfg["input"]["padding"]))
        return {**item, "image": tensor, "box": final}


class ZebraPoseTask(Task):
    best_metric = f"{evaluation.MAIN}/mean"
    groups = GROUPS
    patterns = {**GROUPS, **SETS}
    published = yaml.safe_load(Path(__file__).with_name("published.yaml").read_text())
    tables = (OBJECTS,)

    def __init__(self, cfg: dict, data_root: Path) -> None:
        super().__init__(cfg, data_root)
        self.root = data_root / cfg["data"]["root"]
        self.weights = LossWeights(**cfg["loss"])
        self._data: BOP | None = None

    @property
    def data(self) -> BOP:
        if self._data is None:
            self._data = BOP(self.root, self.cfg["data"]["objects"])
            if self._data.bits != self.cfg["network"]["code_bits"]:
                raise DataError(f"{self.root / 'models_GT_color'}: the codes have {self._data.bits} bits, "
                                f"network.code_bits is {self.cfg['network']['code_bits']}")
        return self._data

    def prepare_data(self) -> str | None:
        note = prepare_synthetic(self.cfg["data"]["synthetic"], self.root, self.root / "models" / "models_info.json",
                                 "LINEMOD", generate)
        if not (self.root / "models_GT_color").is_dir():
            raise DataError(f"{self.root / 'models_GT_color'}: missing; the ZebraPose ground truth (Class_CorresPoint "
                            "files and <split>_GT code images) comes from the ZebraPoseGT release (dfki-av/ZebraPoseGT)")
        return note

    def dataset(self, split: str, train: bool) -> Dataset:
        if train:
            return TrainCrops(self.data, self.cfg)
        return TestCrops(self.data, self.cfg, split)

    def collate(self, samples: list[dict]) -> Batch:
        items = [i for s in samples for i in s["items"]] if "items" in samples[0] else samples
        names = [i["obj"] for i in items]
        batch: Batch = {"index": [s["index"] for s in samples], "obj": names,
                        "image": torch.stack([i["image"] for i in items]),
                        "groups": {n: torch.tensor([k for k, m in enumerate(names) if m == n]) for n in dict.fromkeys(names)}}
        if "mask" in items[0]:
            batch["mask"] = torch.stack([i["mask"] for i in items])
            batch["code"] = torch.stack([i["code"] for i in items])
        else:
            batch["box"], batch["K"] = [i["box"] for i in items], [i["K"] for i in items]
        return batch

    def build_network(self) -> PerObject:
        n = self.cfg["network"]
        return PerObject({name: ZebraPoseNet(n["width"], n["blocks"], n["code_bits"])
                          for name in self.cfg["data"]["objects"]})

    def load_weights(self, model: torch.nn.Module, state: dict, source: str) -> dict[str, list[str]]:
        """An official ZebraPose file (`{"model_state_dict": ...}`, one object: data.objects
        must name one) or a bundle `{"objects": {name: official state}}` of several. The
        loss's error histogram is not in official files: it starts unset, as officially."""
        if "objects" in state:
            files = state["objects"]
            if not isinstance(files, dict) or set(files) != set(model.keys()):
                raise CheckpointError(f"{source}: the bundle holds objects {sorted(files) if isinstance(files, dict) else files}, "
                                      f"data.objects is {list(model.keys())}")
        elif len(model) == 1:
            files = {next(iter(model.keys())): state}
        else:
            raise CheckpointError(f"{source}: one official network, but data.objects names {len(model)} objects "
                                  "(load a bundle {\"objects\": {name: file}} or set data.objects to one)")
        merged, dropped = {}, []
        for name, file in files.items():
            weights, aliases = official_state(file, f"{source} [{name}]")
            merged.update({f"{name}.{k}": v for k, v in weights.items()})
            merged[f"{name}.code_error_hist"] = model[name].code_error_hist
            dropped += [f"{name}.{k}" for k in aliases]
        load_matching(model, merged, source)
        return {ALIASES: dropped} if dropped else {}

    def forward(self, model: torch.nn.Module, batch: Batch) -> dict[str, ObjectOutput]:
        out = {}
        for name, rows in batch["groups"].items():
            net = model[name]
            out[name] = ObjectOutput(*net(batch["image"][rows.to(batch["image"].device)]), net)
        return out

    def export_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"image": batch["image"]}

    def loss(self, outputs: dict[str, ObjectOutput], batch: Batch, across: Across | None = None) -> dict[str, torch.Tensor]:
        """The per-object losses summed (each network sees only its own); the histogram
        moves only in a training step."""
        terms: dict[str, torch.Tensor] = {}
        for name, out in outputs.items():
            rows = batch["groups"][name].to(out.mask.device)
            update = out.net.training and torch.is_grad_enabled()
            for key, value in object_loss(out.mask, out.code, batch["mask"][rows], batch["code"][rows],
                                          out.net.code_error_hist, update, self.weights).items():
                terms[key] = terms.get(key, 0) + value
        return terms

    def predict(self, outputs: dict[str, ObjectOutput], batch: Batch) -> list[dict]:
        ev, models = self.cfg["evaluation"], {m.name: m for m in self.data.models.values()}
        found: dict[int, dict] = {}
        for name, out in outputs.items():
            for row, k in enumerate(batch["groups"][name].tolist()):
                pose = None
                if batch["box"][k] is not None:
                    points, pixels = correspondences(out.mask[row], out.code[row], models[name].class_points,
                                                     batch["box"][k])
                    pose = solve_pose(points, pixels, batch["K"][k], ev["pnp_threshold"], ev["pnp_iterations"])
                found[k] = {"index": batch["index"][k], "R": None if pose is None else pose[0],
                            "t": None if pose is None else pose[1]}
        return [found[k] for k in range(len(batch["index"]))]

    def evaluate(self, predictions: list[dict], dataset: TestCrops) -> Scored:
        return evaluation.evaluate(predictions, dataset.instances, self.data.models)

    def resample(self, per_image: PerImage, weights: np.ndarray) -> dict[str, np.ndarray]:
        return evaluation.resample(per_image, weights)

    def report(self, metrics: dict[str, float], folder: Path) -> str:
        return evaluation.table(metrics, self.data.models)
