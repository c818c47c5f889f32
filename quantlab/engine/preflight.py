"""What is checked before a run creates anything: a run that cannot succeed refuses to
start with one line, instead of failing after an epoch or leaving an empty folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from quantlab.engine.distributed import World
from quantlab.engine.logbook import checkpoint_path, names_experiment_checkpoint
from quantlab.errors import CheckpointError, ConfigError, DataError, ExperimentError, QuantlabError, shared
from quantlab.engine.task import Task
from quantlab.quant.algorithms import REGISTRY, check_epochs
from quantlab.quant.editing import Rule


def writable_folder(path: Path, what: str) -> None:
    """`path` exists or can be created, and a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ExperimentError(f"{path}: {what} is not writable ({exc.strerror or exc})") from None


def writable_experiment(root: Path) -> None:
    """A continued experiment can take what the run writes: its folder and every folder
    already in it (saves/, eval/, stats/, the children of a search) are folders this
    process may write into, instead of a failure at the first save, an epoch later."""
    writable_folder(root, "the experiment folder")
    for name in ("saves", "eval", "stats"):
        folder = root / name
        if folder.exists() and not folder.is_dir():
            raise ExperimentError(f"{folder}: the experiment's {name}/ is a file, not a folder")
    for folder, _, _ in os.walk(root):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ExperimentError(f"{folder}: not writable by this user; the run would fail when it first writes "
                                  "there")


def device(choice: str) -> None:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'engine.device' is cuda, but torch sees no CUDA device "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")


def recipe(qcfg: dict, epochs: int | None) -> None:
    """Every `quantize.rules` entry names a registered family at a bit-width it takes,
    every family's own settings are valid (INQ's schedule, which MQAT's INQ stages follow
    too), and a run that trains its rules for `epochs` (None: it trains none) finishes
    their schedules in them."""
    rules = [Rule.from_config(entry, f"quantize.rules[{i}]") for i, entry in enumerate(qcfg["rules"])]
    used = sorted({r.algorithm for r in rules})
    for name, algorithm in REGISTRY.items():
        if algorithm.check_settings is not None:
            algorithm.check_settings(qcfg, name in used)
    for name in used if epochs is not None else ():
        check_epochs(name, qcfg, epochs, "training.epochs")


def checkpoint(spec: str, saves: Path | None) -> None:
    """The checkpoint `--ckpt` names exists, before any data is prepared: one of the
    experiment's (`saves`: its folder; None without --exp_id), or a file."""
    if names_experiment_checkpoint(spec) and saves is None:
        raise ConfigError(f"--ckpt {spec} names a checkpoint of an experiment: pass its --exp_id, or give a file")
    try:
        path = checkpoint_path(saves.parent if saves is not None else Path("."), spec)
    except QuantlabError as exc:
        raise shared(exc) from None
    if not path.is_file():
        raise shared(CheckpointError(f"{path}: checkpoint '{spec}' not found"))


def evaluation_split(task: Task, split: str, key: str) -> None:
    """A split evaluated during training (`key` names it) has samples and its first one loads."""
    data = task.dataset(split, train=False)
    if len(data) == 0:
        raise shared(DataError(f"the {split} split ({key}) has no samples"))
    data[0]


def training_split(task: Task, batch_size: int, world: World) -> None:
    """Every rank gets at least one whole batch: each drops its incomplete last batch, so a
    smaller split would train no step and save the initial weights as the result."""
    count = len(task.dataset("train", train=True))
    if count < batch_size * world.size:
        raise shared(DataError(
            f"the train split has {count} samples, fewer than {world.size} rank(s) x training.batch_size "
            f"{batch_size} = {batch_size * world.size}: no training step would run"))
