"""The contract between the generic engine and a problem/topology folder.

A topology package (problems/<P>/<T>/__init__.py) exposes `build_task(cfg, data_root)`
returning a `Task`. The engine never imports problems/: main.py looks the package up by
name and hands the task to the modes.

The base class holds what every problem provides. A method that needs more asks the task
for an optional hook and says so when it is missing:
  critical_metric, critical_loss(outputs, batch)   the critical-category objective (Fisher)
  distillation_loss(student, teacher)              output sensitivity (PTQ output schemes)
  balanced_sample(count, seed)                     class-balanced images for traces
  reference_prefix                                 where the MQAT reference code wraps keys
  tables                                           the problem's own paper tables (TableSpec)
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from quantlab.metrics.bootstrap import PerImage, Scored

Batch = dict[str, Any]
#: averages one number over the ranks that take a training step together
Across = Callable[[float, str], float]


class Task(ABC):
    #: key of the metric that selects the `best` checkpoint (higher is better)
    best_metric: str
    #: the MQAT modules, as regexes over qualified module names (the topology's quantize.py)
    groups: dict[str, str] = {}
    #: every name a recipe or `quantize.exclude` may use: the modules and named sets
    #: (e.g. `first_last`), each a regex or a list of regexes
    patterns: dict[str, str | list[str]] = {}
    #: the paper's numbers for the tables, in best_metric's units (published.yaml)
    published: dict = {}

    def __init__(self, cfg: dict, data_root: Path) -> None:
        self.cfg = cfg
        self.data_root = data_root

    @abstractmethod
    def prepare_data(self) -> str | None:
        """Make sure the dataset exists (e.g. generate the synthetic set); say what was done.

        Called on the main rank only, before any other rank reads the data.
        """

    @abstractmethod
    def dataset(self, split: str, train: bool) -> Dataset:
        """The split's samples; `train=True` adds augmentation and training targets.

        A training dataset has `set_epoch(epoch)` so augmentation is a function of
        (seed, epoch, index) alone: resumed runs see the same samples.
        """

    @abstractmethod
    def collate(self, samples: list[Any]) -> Batch:
        """Stack samples into a batch dict (tensors plus per-sample metadata)."""

    @abstractmethod
    def build_network(self) -> torch.nn.Module:
        """The float network, randomly initialised."""

    @abstractmethod
    def load_weights(self, model: torch.nn.Module, state: dict, source: str) -> dict[str, list[str]]:
        """Load a public checkpoint layout into `model`; return the keys it dropped, by the
        reason (e.g. "re-derived from network.anchor_sizes") for the log."""

    @abstractmethod
    def forward(self, model: torch.nn.Module, batch: Batch) -> Any:
        """Run the network on a batch."""

    @abstractmethod
    def loss(self, outputs: Any, batch: Batch, across: Across | None = None) -> dict[str, torch.Tensor]:
        """Weighted loss terms; their sum is minimised. In a training step the trainer
        passes `across`, which averages a per-rank number (e.g. DETR's box count) over the
        ranks; elsewhere (traces on one rank's images) it is None: this rank alone."""

    def loss_counts(self, batch: Batch) -> dict[str, float]:
        """The numbers `loss` averages over ranks with `across`, by the names it passes,
        when the batch alone gives them (DETR's box count): the trainer starts their
        all-reduce a batch ahead, so that a step waits for nothing but its gradients.
        A number left out here is averaged inside the step. None by default."""
        return {}

    @abstractmethod
    def predict(self, outputs: Any, batch: Batch) -> list[dict]:
        """Per-sample predictions (picklable, each with the sample's `index`)."""

    @abstractmethod
    def evaluate(self, predictions: list[dict], dataset: Dataset) -> Scored:
        """Metrics of the predictions over the whole split (flat dict of numbers) and the
        per-image results they come from, which `resample` scores again."""

    @abstractmethod
    def resample(self, per_image: PerImage, weights: np.ndarray) -> dict[str, np.ndarray]:
        """The metrics again with each test image counted as `weights` [B, images] says
        (bootstrap replicates; nan where a replicate leaves a metric undefined). At unit
        weights they equal `evaluate`'s metrics (the tests hold each task to it)."""

    @abstractmethod
    def report(self, metrics: dict[str, float], folder: Path) -> str:
        """A printable table of `metrics`; may write plots into `folder`."""

    @abstractmethod
    def export_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The network's positional inputs in `batch`, by name (for ONNX export)."""

    def example_batch(self) -> Batch:
        """One evaluation sample as a batch: traces the compute cost (BOPs) of the network."""
        data = self.dataset(self.cfg["engine"]["eval_split"], train=False)
        return self.collate([data[0]])


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}
