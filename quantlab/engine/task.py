"""The contract between the generic engine and a problem/topology folder.

A topology package (problems/<P>/<T>/__init__.py) exposes `build_task(cfg, data_root)`
returning a `Task`. The engine never imports problems/: main.py looks the package up by
name and hands the task to the trainer.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from quantlab.engine.errors import DataError
from quantlab.files import exclusive_lock

Batch = dict[str, Any]
#: written into every synthetic set, with the parameters it was generated from
SYNTHETIC_MARKER = "SYNTHETIC.json"


class Task(ABC):
    #: key of the metric that selects the `best` checkpoint (higher is better)
    best_metric: str
    #: key of the metric over the critical categories (tasks with a critical objective)
    critical_metric: str | None = None
    #: module groups for quantization recipes, from the topology's quantize.py
    groups: dict[str, str] = {}
    #: where the MQAT reference code's wrapper puts this network's keys (e.g. "model.")
    reference_prefix: str = ""
    #: the paper's numbers for --mode table (layout in quantlab.mqat.tables), best_metric's units
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
    def load_weights(self, model: torch.nn.Module, state: dict, source: str) -> list[str]:
        """Load a public checkpoint layout into `model`; return the keys that were dropped."""

    @abstractmethod
    def forward(self, model: torch.nn.Module, batch: Batch) -> Any:
        """Run the network on a batch."""

    @abstractmethod
    def loss(self, outputs: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """Weighted loss terms; their sum is minimised."""

    @abstractmethod
    def predict(self, outputs: Any, batch: Batch) -> list[dict]:
        """Per-sample predictions (picklable, each with the sample's `index`)."""

    @abstractmethod
    def evaluate(self, predictions: list[dict], dataset: Dataset) -> dict[str, float]:
        """Metrics of the predictions over the whole split (flat dict of numbers)."""

    def prepare_synthetic(self, root: Path, required: Path, name: str,
                          generate: Callable[[Path, dict], str]) -> str | None:
        """`prepare_data` for a problem that ships a synthetic generator: nothing when
        `required` exists (unless the marker says it was generated with other
        `data.synthetic.params`), else generate, or say which file is missing.

        Generation never touches a folder that holds anything but a synthetic set of ours:
        it writes a new folder beside `root` (under a lock, so concurrent runs generate
        once) and renames it into place, over an empty `root` or an incomplete one of ours."""
        synthetic = self.cfg["data"]["synthetic"]
        marker = root / SYNTHETIC_MARKER
        if required.is_file():
            if marker.is_file() and json.loads(marker.read_text()) != synthetic["params"]:
                raise DataError(f"{marker}: this synthetic set was generated with other parameters than "
                                "data.synthetic.params; delete it or set data.root")
            return None
        if not synthetic["generate"]:
            raise DataError(f"{required}: missing dataset file "
                            f"(point data.root at {name}, or set data.synthetic.generate=true)")
        if root.is_dir() and any(root.iterdir()) and not marker.is_file():
            raise DataError(f"{required}: missing dataset file; {root} holds other files, so no synthetic set "
                            f"is written there (point data.root at {name}, or at a missing or empty folder to "
                            "generate the synthetic set)")
        with exclusive_lock(root.with_name(f".{root.name}.lock"), wait=True):
            if required.is_file():  # another run generated it while this one waited
                return self.prepare_synthetic(root, required, name, generate)
            for stale in root.parent.glob(f".{root.name}.*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
            print(f"no {name} data in {root}: generating the synthetic set first", flush=True)
            partial = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".partial"))
            note = generate(partial, synthetic["params"])
            (partial / SYNTHETIC_MARKER).write_text(json.dumps(synthetic["params"], indent=2, sort_keys=True))
            if root.exists():
                shutil.rmtree(root)  # empty, or an incomplete synthetic set of ours
            partial.rename(root)
        return note

    def critical_loss(self, outputs: Any, batch: Batch) -> dict[str, torch.Tensor]:
        """The loss of the critical-category objective (Fisher-critical sensitivity)."""
        raise NotImplementedError(f"{type(self).__name__} has no critical-category objective")

    def balanced_sample(self, count: int, seed: int) -> list[int]:
        """`count` training indices with the classes represented evenly (trace estimates)."""
        raise NotImplementedError(f"{type(self).__name__} does not draw class-balanced samples")

    def example_batch(self) -> Batch:
        """One evaluation sample as a batch: traces the compute cost (BOPs) of the network."""
        data = self.dataset(self.cfg["engine"]["eval_split"], train=False)
        return self.collate([data[0]])

    def export_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The network's positional inputs in `batch`, by name (for ONNX export)."""
        raise NotImplementedError(f"{type(self).__name__} does not name its network inputs for export")

    @abstractmethod
    def report(self, metrics: dict[str, float], folder: Path) -> str:
        """A printable table of `metrics`; may write plots into `folder`."""


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}
