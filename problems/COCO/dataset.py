"""COCO 2017 detection as DETR reads it: `annotations/instances_{split}2017.json` and the
`{split}2017/` image folder under the dataset root, crowd boxes left out of training
targets, DETR's transforms (horizontal flip, multi-scale resize capped at `max_size`,
optionally the random-crop branch), boxes as normalised (cx, cy, w, h)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from quantlab.errors import DataError

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}2017.json"


#: the keys of each entry that the loader and COCOeval read, by section (and its entries' name)
REQUIRED = {"images": ("image", ("id", "file_name", "height", "width")),
            "annotations": ("annotation", ("id", "image_id", "category_id", "bbox")),
            "categories": ("category", ("id", "name"))}


def load_coco(root: Path, split: str) -> COCO:
    """The split's annotations, checked for the keys we read, so that a malformed file is
    one error naming it and the entry rather than a KeyError deep in pycocotools."""
    path = annotation_file(root, split)
    if not path.is_file():
        raise DataError(f"{path}: missing COCO annotation file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    for section, (entry_name, keys) in REQUIRED.items():
        entries = data.get(section) if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise DataError(f"{path}: no '{section}' list")
        for entry in entries:
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                where = entry.get("id", "?") if isinstance(entry, dict) else "?"
                raise DataError(f"{path}: {entry_name} {where}: missing key(s) {missing}")
    if not data["images"]:
        raise DataError(f"{path}: lists no image")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class RandomSizeCrop(v2.Transform):
    """DETR's crop: a random window with sides in [low, min(side, high)]."""

    def __init__(self, low: int, high: int) -> None:
        super().__init__()
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        h = int(torch.randint(min(self.low, height), min(height, self.high) + 1, ()))
        w = int(torch.randint(min(self.low, width), min(width, self.high) + 1, ()))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt, params: dict):
        return v2.functional.crop(inpt, **params)


def transforms(cfg: dict, train: bool) -> v2.Compose:
    """DETR's: train = flip + (resize | resize, crop, resize); eval = resize to val_size."""
    size = cfg["input"]
    if not train:
        resize = v2.RandomShortestSize([size["val_size"]], max_size=size["max_size"])
        return v2.Compose([v2.ToImage(), resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    scales = v2.RandomShortestSize(size["train_scales"], max_size=size["max_size"])
    steps: list = [v2.ToImage(), v2.RandomHorizontalFlip()]
    if size["crop"]:
        crop = v2.Compose([v2.RandomShortestSize(size["crop_scales"]), RandomSizeCrop(*size["crop_size"]), scales])
        steps.append(v2.RandomChoice([scales, crop]))
    else:
        steps.append(scales)
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(labels_getter=lambda s: s[1]["labels"]),
              v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(steps)


class CocoDetection(Dataset):
    """Item: {index, image_id, image [3, H, W] normalised, boxes [N, 4] normalised cxcywh,
    labels [N] category ids, orig_size (h, w), size (h, w)}."""

    def __init__(self, root: Path, split: str, cfg: dict, train: bool, coco: COCO | None = None) -> None:
        self.root, self.split = root, split
        self.coco = coco or load_coco(root, split)
        self.ids = sorted(self.coco.imgs)
        self.transform = transforms(cfg, train)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.root / f"{self.split}2017" / info["file_name"]
        if not path.is_file():
            raise DataError(f"{path}: missing image of {annotation_file(self.root, self.split)}")
        image = decode_image(str(path), mode=ImageReadMode.RGB)
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = tv_tensors.BoundingBoxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                                         format="XYXY", canvas_size=tuple(image.shape[-2:]))
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        image, target = self.transform(image, {"boxes": boxes, "labels": labels})
        h, w = image.shape[-2:]
        xyxy = target["boxes"].as_subclass(torch.Tensor)
        cxcywh = torch.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / w, (xyxy[:, 1] + xyxy[:, 3]) / 2 / h,
                              (xyxy[:, 2] - xyxy[:, 0]) / w, (xyxy[:, 3] - xyxy[:, 1]) / h], 1)
        return {"index": index, "image_id": image_id, "image": image.as_subclass(torch.Tensor),
                "boxes": cxcywh, "labels": target["labels"],
                "orig_size": torch.tensor([info["height"], info["width"]]), "size": torch.tensor([h, w])}


def collate(samples: list[dict]) -> dict:
    """Images zero-padded to the batch's largest; `mask` is True on padding (DETR's
    NestedTensor); targets stay per image."""
    height = max(s["image"].shape[1] for s in samples)
    width = max(s["image"].shape[2] for s in samples)
    images = torch.zeros(len(samples), 3, height, width)
    mask = torch.ones(len(samples), height, width, dtype=torch.bool)
    for i, s in enumerate(samples):
        _, h, w = s["image"].shape
        images[i, :, :h, :w] = s["image"]
        mask[i, :h, :w] = False
    keys = ("index", "image_id", "boxes", "labels", "orig_size", "size")
    return {"image": images, "mask": mask, **{k: [s[k] for s in samples] for k in keys}}
