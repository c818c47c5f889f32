"""The experiment logbook: one folder per experiment under logs/<problem>/<topology>/.

    expNNNN/config.yaml        resolved configuration (what a resume re-uses)
    expNNNN/saves/             epoch_NNNN.pt, last.pt, best.pt
    expNNNN/stats/             TensorBoard event files
    expNNNN/eval/<tag>/        metrics.json, per_image.npz (+ plots) for each evaluation
    expNNNN/children/<name>/   the same layout for each child run of a search (MQAT, HAWQ)
    expNNNN/seeds/seed<s>/     with `seeds`, one search per seed: its records and children
    expNNNN/.lock              locked (flock) by the run that writes the experiment
                               (shared by the jobs of a search's fan-out)
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from quantlab.engine import checkpoint
from quantlab.engine.config import Config, dump
from quantlab.errors import CheckpointError, ConfigError, ExperimentError
from quantlab.files import Busy, exclusive_lock, link_atomic, remove_stale_temps, write_atomic, write_text_atomic
from quantlab.metrics.bootstrap import DIGEST_KEY, PER_IMAGE, PerImage
from quantlab.records import read_json
from quantlab.signals import held


class Logbook:
    """Paths and files of one experiment; only the main rank writes."""

    def __init__(self, logs_root: Path, problem: str, topology: str, exp_id: int,
                 writer: bool) -> None:
        self.exp_id = exp_id
        self.writer = writer
        self._place(logs_root / problem / topology / f"exp{exp_id:04d}")
        #: the folder a search writes its records in, which the paths in them are relative to
        self.base = self.root

    def _place(self, root: Path) -> None:
        self.root = root
        self.saves = root / "saves"
        self.stats = root / "stats"
        self.evals = root / "eval"

    def child(self, name: str) -> "Logbook":
        """The logbook of a child run (a search candidate or stage) inside this experiment:
        `children/<name>/` with the same layout."""
        kid = copy.copy(self)
        kid._place(self.root / "children" / name)
        return kid

    def seeded(self, seed: int) -> "Logbook":
        """The logbook of one seed's search (`seeds/seed<s>/`): its records, with paths
        relative to it, and its children inside it."""
        kid = copy.copy(self)
        kid._place(self.root / "seeds" / f"seed{seed}")
        kid.base = kid.root
        return kid

    def relative(self, path: Path) -> str:
        """`path` as the records hold it: relative to the search's folder."""
        return str(path.relative_to(self.base))

    @staticmethod
    def claim(logs_root: Path, problem: str, topology: str) -> int:
        """A new experiment id whose folder this call created. `mkdir` either creates the
        folder or fails, so two runs started at the same instant never share an id."""
        folder = logs_root / problem / topology
        folder.mkdir(parents=True, exist_ok=True)
        ids = [int(m.group(1)) for p in folder.glob("exp*") if (m := re.fullmatch(r"exp(\d{4,})", p.name))]
        exp_id = max(ids, default=-1) + 1
        while True:
            try:
                (folder / f"exp{exp_id:04d}").mkdir()
                return exp_id
            except FileExistsError:
                exp_id += 1

    @contextlib.contextmanager
    def lock(self, shared: bool = False) -> Iterator[list[Path]]:
        """Own the experiment for the `with` block, one writing run at a time (or, `shared`,
        together with the other jobs of a search, which claim its children one by one);
        yields the temporary files interrupted writers had left there, which are now
        removed (by an exclusive owner only: a sharing job's may be live)."""
        try:
            with exclusive_lock(self.root / ".lock", wait=False, shared=shared):
                yield [] if shared else remove_stale_temps(self.root)
        except Busy:
            raise ExperimentError(f"{self.root}: experiment in use by another run "
                                  f"(which holds {self.root / '.lock'})") from None

    def create(self, cfg: Config) -> None:
        if self.writer:
            for folder in (self.saves, self.stats, self.evals):
                folder.mkdir(parents=True, exist_ok=True)
            self.write_config(cfg)

    def write_config(self, cfg: Config) -> None:
        if self.writer:
            write_text_atomic(self.root / "config.yaml", dump(cfg))

    def load_config(self) -> Config:
        path = self.root / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{path}: no such experiment (config.yaml missing)")
        return yaml.safe_load(path.read_text())

    def has_results(self) -> bool:
        """Whether the experiment holds a checkpoint or an evaluation worth keeping."""
        return any(self.root.rglob("*.pt")) or any(self.root.rglob("metrics.json"))

    def discard(self) -> bool:
        """Remove this new experiment's folder if it failed before any result."""
        if not self.writer or not self.root.is_dir() or self.has_results():
            return False
        shutil.rmtree(self.root, ignore_errors=True)
        return True

    # checkpoints -------------------------------------------------------------------------
    def epoch_path(self, epoch: int) -> Path:
        return self.saves / epoch_file(epoch)

    def save(self, state: dict[str, Any], epoch: int, keep_numbered: bool, is_best: bool) -> None:
        """Write the epoch's checkpoint as `last.pt`, then give it the names `epoch_NNNN.pt`
        (when kept) and `best.pt` (when best) by hard links: every name holds a whole file."""
        if not self.writer:
            return
        last = self.saves / "last.pt"
        with held():  # the three names change together, or a stop waits until they have
            checkpoint.save_atomic(state, last)
            if keep_numbered:
                link_atomic(last, self.epoch_path(epoch))
            if is_best:
                link_atomic(last, self.saves / "best.pt")

    def resolve(self, spec: str) -> Path:
        """The checkpoint `spec` names (`checkpoint_path`), which must exist."""
        path = checkpoint_path(self.root, spec)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint '{spec}' not found")
        return path

    # metrics -----------------------------------------------------------------------------
    def eval_dir(self, tag: str) -> Path:
        folder = self.evals / tag
        if self.writer:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def write_metrics(self, tag: str, metrics: dict[str, Any], per_image: PerImage) -> Path:
        """`eval/<tag>/metrics.json` and, beside it, the per-image results the tables'
        intervals are drawn from (`per_image.npz`, compressed, no pickles). Two files cannot
        be replaced in one atomic step, so metrics.json records the SHA-256 of the npz it
        belongs to (`DIGEST_KEY`): a run killed between the two writes leaves a pair whose
        digests differ, which the tables refuse (quantlab.metrics.intervals)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **per_image)
        data = buffer.getvalue()
        if self.writer:
            write_atomic(self.evals / tag / PER_IMAGE, lambda fh: fh.write(data))
        return self.write_json(Path("eval") / tag / "metrics.json",
                               {**metrics, DIGEST_KEY: hashlib.sha256(data).hexdigest()})

    def write_json(self, relative: str | Path, data: Any) -> Path:
        path = self.root / relative
        if self.writer:
            write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))
        return path


def epoch_file(epoch: int) -> str:
    """The name of an epoch's checkpoint in saves/."""
    return f"epoch_{epoch:04d}.pt"


def names_experiment_checkpoint(spec: str) -> bool:
    """Whether `--ckpt spec` names a checkpoint of an experiment, not a file."""
    return spec in ("last", "best") or spec.isdigit() or spec == "mqat" or spec.startswith("mqat:")


def checkpoint_path(root: Path, spec: str) -> Path:
    """Where `--ckpt spec` points for the experiment `root`: `last`, `best` or an epoch
    number in its saves/, `mqat` / `mqat:<budget>` (its MQAT result), or a file path."""
    if spec in ("last", "best"):
        return root / "saves" / f"{spec}.pt"
    if spec.isdigit():
        return root / "saves" / epoch_file(int(spec))
    if spec == "mqat" or spec.startswith("mqat:"):
        return mqat_checkpoint(root, spec)
    return Path(spec)


def mqat_checkpoint(root: Path, spec: str) -> Path:
    """`mqat` (or `mqat:<budget>`): the last stage's checkpoint of the MQAT result at the
    first (or that) budget that the experiment's `mqat/result.json` records."""
    record = root / "mqat" / "result.json"
    points = read_json(record).get("points", [])
    if spec.startswith("mqat:"):
        points = [p for p in points if f"{p['budget']:g}" == spec[5:]]
    if not points:
        raise CheckpointError(f"{record}: no finished MQAT result for --ckpt {spec}")
    return root / Path(points[0]["evaluation"]).parents[1] / "saves" / "last.pt"
