"""What is checked before a run creates anything: a run that cannot succeed refuses to
start with one line, instead of failing after an epoch or leaving an empty folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from quantlab.engine.distributed import World
from quantlab.errors import ConfigError, DataError, ExperimentError, shared
from quantlab.engine.task import Task
from quantlab.quant.editing import Rule
from quantlab.quant.qat import inq_schedule


def writable_folder(path: Path, what: str) -> None:
    """`path` exists or can be created, and a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ExperimentError(f"{path}: {what} is not writable ({exc.strerror or exc})") from None


def device(choice: str) -> None:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'engine.device' is cuda, but torch sees no CUDA device "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")


def recipe(qcfg: dict) -> None:
    """Every `quantize.rules` entry names a known algorithm at a valid bit-width, and the
    INQ schedule (what INQ rules and MQAT's INQ stages follow) is one."""
    rules = [Rule.from_config(entry, f"quantize.rules[{i}]") for i, entry in enumerate(qcfg["rules"])]
    if qcfg["inq_schedule"] or any(r.algorithm == "inq" for r in rules):
        inq_schedule(qcfg["inq_schedule"])


def evaluation_split(task: Task, split: str) -> None:
    """The split evaluated after training has samples and its first one loads."""
    data = task.dataset(split, train=False)
    if len(data) == 0:
        raise shared(DataError(f"the {split} split (engine.eval_split) has no samples"))
    data[0]


def training_split(task: Task, batch_size: int, world: World) -> None:
    """Every rank gets at least one whole batch: each drops its incomplete last batch, so a
    smaller split would train no step and save the initial weights as the result."""
    count = len(task.dataset("train", train=True))
    if count < batch_size * world.size:
        raise shared(DataError(
            f"the train split has {count} samples, fewer than {world.size} rank(s) x training.batch_size "
            f"{batch_size} = {batch_size * world.size}: no training step would run"))
