"""ZebraPose's crops and augmentation (`bop_dataset_pytorch.py`, `GDR_Net_Augmentation.py`).

Boxes are [x, y, w, h] in pixels. Training crops the visible GT box jittered in scale and
centre, padded 1.5x; testing pads the detection (or GT) box 1.5x. `crop_resize` clips the
box to the image and resizes without keeping the aspect ratio (the paper's config);
`crop_square_resize` takes the square of side max(w, h) around the box centre, zero
outside the image (the BOP configs). The network sees BGR channels normalised with
ImageNet's RGB statistics, as the official code feeds it.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
Box = tuple[int, int, int, int]


def jitter_box(box: Box, rng: np.random.Generator, scale: float, shift: float, padding: float) -> Box:
    """`aug_Bbox`: size x (1 + scale U(-1, 1)) x padding, centre moved by shift U(-1, 1) x (w, h)."""
    x, y, w, h = box
    s = 1 + scale * rng.uniform(-1, 1)
    dx, dy = shift * rng.uniform(-1, 1, 2)
    cx, cy = x + 0.5 * w + w * dx, y + 0.5 * h + h * dy
    bw, bh = int(w * s * padding), int(h * s * padding)
    return int(cx - bw / 2), int(cy - bh / 2), bw, bh


def pad_box(box: Box, padding: float) -> Box:
    """`padding_Bbox`: the same centre, sides x padding, corner truncated to int."""
    x, y, w, h = box
    cx, cy = x + 0.5 * w, y + 0.5 * h
    bw, bh = int(w * padding), int(h * padding)
    return int(cx - bw / 2), int(cy - bh / 2), bw, bh


def _square(box: Box) -> Box:
    """`crop_square_resize`'s square as the official code computes it: the box's shorter side
    widened about its centre to the longer one, each edge truncated toward zero by int().
    A negative edge that is not an integer is truncated up, so that square is one pixel
    narrower than max(w, h) (its width is what the PnP mapping uses)."""
    x, y, w, h = box
    x1, y1, x2, y2 = x, y, x + w, y + h
    cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    if h > w:
        x1, x2 = cx - h / 2, cx + h / 2
    else:
        y1, y2 = cy - w / 2, cy + w / 2
    x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
    return x1, y1, x2 - x1, y2 - y1


def final_box(box: Box, method: str, image_size: tuple[int, int]) -> Box:
    """The box a crop actually covers (`get_final_Bbox`): what maps pixels back for PnP."""
    x, y, w, h = box
    if method == "crop_resize":
        height, width = image_size
        x1, y1 = max(x, 0), max(y, 0)
        return x1, y1, max(min(x + w, width) - x1, 1), max(min(y + h, height) - y1, 1)
    return _square(box)


def crop(image: np.ndarray, box: Box, method: str, size: int, interpolation: int) -> np.ndarray:
    """The crop of `box` (the padded box) by `method`, resized to size x size.

    `crop_resize`: the box clipped to the image. `crop_square_resize`, index for index as
    the official code: a zero canvas of side max(w, h), the image pasted at the truncated
    square's offset; where truncation narrowed the square, the canvas's last column (or
    row) stays black."""
    height, width = image.shape[:2]
    if method == "crop_resize":
        x, y, w, h = final_box(box, method, (height, width))
        return cv2.resize(image[y:y + h, x:x + w], (size, size), interpolation=interpolation)
    side = max(box[2], box[3])
    x1, y1, w, h = _square(box)
    x2, y2 = x1 + w, y1 + h
    canvas = np.zeros((side, side, *image.shape[2:]), image.dtype)
    left, x1 = max(-x1, 0), max(x1, 0)
    right = left + min(width - x1, x2 - x1)
    top, y1 = max(-y1, 0), max(y1, 0)
    bottom = top + min(height - y1, y2 - y1)
    x2, y2 = min(x2, width), min(y2, height)
    canvas[top:bottom, left:right] = image[y1:y2, x1:x2]
    return cv2.resize(canvas, (size, size), interpolation=interpolation)


def normalize(bgr: np.ndarray) -> torch.Tensor:
    """uint8 BGR crop -> [3, h, w] float: /255, then ImageNet mean/std in channel order."""
    x = (bgr.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


# colour augmentation: GDR-Net's imgaug pipeline re-implemented (imgaug needs numpy 1) -------
def _salt_pepper(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hit = rng.random(x.shape[:2]) < 0.05
    x[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0.0, 255.0)[:, None]
    return x


def _motion_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = np.zeros((5, 5), np.float32)
    k[2, :] = 1.0
    turn = cv2.getRotationMatrix2D((2.0, 2.0), float(rng.uniform(0, 360)), 1.0)
    k = cv2.warpAffine(k, turn, (5, 5))
    return cv2.filter2D(x, -1, k / max(float(k.sum()), 1e-6))


def _coarse_dropout(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    small = rng.random((max(int(h * 0.05), 2), max(int(w * 0.05), 2))) < 0.1
    keep = cv2.resize((~small).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    return x * keep[..., None]


def _channels(rng: np.random.Generator, per_channel: float, draw) -> np.ndarray:
    """One value for the image, or one per channel with probability `per_channel`."""
    return draw(3) if rng.random() < per_channel else np.repeat(draw(1), 3)


AUGMENTATIONS = (  # (probability, op), in imgaug's fixed order
    (0.3, _salt_pepper),
    (0.2, _motion_blur),
    (0.4, _coarse_dropout),
    (0.5, lambda x, rng: cv2.GaussianBlur(x, (0, 0), max(float(rng.random()), 1e-3))),
    (0.5, lambda x, rng: x + _channels(rng, 0.3, lambda n: rng.integers(-20, 21, n))),
    (0.4, lambda x, rng: np.where(rng.random(3) < 0.2, 255.0 - x, x)),
    (0.5, lambda x, rng: x * _channels(rng, 0.8, lambda n: rng.uniform(0.7, 1.4, n))),
    (0.5, lambda x, rng: x * rng.uniform(0.7, 1.4)),
    (0.5, lambda x, rng: (x - 128.0) * _channels(rng, 0.3, lambda n: rng.uniform(0.5, 2.0, n)) + 128.0),
)


def color_augment(image: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """With `probability` (0.8 officially) apply each op of the pipeline with its own
    probability to the whole uint8 BGR image; no geometric change."""
    if rng.random() >= probability:
        return image
    x = image.astype(np.float32)
    for p, op in AUGMENTATIONS:
        if rng.random() < p:
            x = np.clip(op(x, rng), 0, 255).astype(np.float32)
    return x.astype(np.uint8)
