"""The experiment logbook: one folder per experiment under logs/<problem>/<topology>/.

    expNNNN/config.yaml        resolved configuration (what a resume re-uses)
    expNNNN/saves/             epoch_NNNN.pt, last.pt, best.pt
    expNNNN/stats/             TensorBoard event files
    expNNNN/eval/<tag>/        metrics.json (+ plots) for each evaluation
    expNNNN/children/<name>/   the same layout for each child run of a search (MQAT, HAWQ)
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

from quantlab.engine import checkpoint
from quantlab.engine.config import Config, dump
from quantlab.engine.errors import CheckpointError, ConfigError


class Logbook:
    """Paths and files of one experiment; only the main rank writes."""

    def __init__(self, logs_root: Path, problem: str, topology: str, exp_id: int,
                 writer: bool) -> None:
        self.exp_id = exp_id
        self.writer = writer
        self._place(logs_root / problem / topology / f"exp{exp_id:04d}")

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

    @staticmethod
    def next_id(logs_root: Path, problem: str, topology: str) -> int:
        folder = logs_root / problem / topology
        ids = [int(m.group(1)) for p in folder.glob("exp*")
               if (m := re.fullmatch(r"exp(\d{4,})", p.name))] if folder.is_dir() else []
        return max(ids, default=-1) + 1

    def create(self, cfg: Config) -> None:
        if self.writer:
            for folder in (self.saves, self.stats, self.evals):
                folder.mkdir(parents=True, exist_ok=True)
            self._write_text(self.root / "config.yaml", dump(cfg))

    def load_config(self) -> Config:
        path = self.root / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{path}: no such experiment (config.yaml missing)")
        return yaml.safe_load(path.read_text())

    # checkpoints -------------------------------------------------------------------------
    def epoch_path(self, epoch: int) -> Path:
        return self.saves / f"epoch_{epoch:04d}.pt"

    def save(self, state: dict[str, Any], epoch: int, keep_numbered: bool, is_best: bool) -> None:
        """Write the epoch's checkpoint and point last (and best) at it."""
        if not self.writer:
            return
        target = self.epoch_path(epoch) if keep_numbered else self.saves / ".current.pt"
        checkpoint.save_atomic(state, target)
        checkpoint.link_atomic(target, self.saves / "last.pt")
        if is_best:
            checkpoint.link_atomic(target, self.saves / "best.pt")
        if not keep_numbered:
            target.unlink()

    def resolve(self, spec: str) -> Path:
        """`last`, `best`, an epoch number, or a path to a checkpoint file."""
        if spec in ("last", "best"):
            path = self.saves / f"{spec}.pt"
        elif spec.isdigit():
            path = self.epoch_path(int(spec))
        else:
            path = Path(spec)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint '{spec}' not found")
        return path

    # metrics -----------------------------------------------------------------------------
    def eval_dir(self, tag: str) -> Path:
        folder = self.evals / tag
        if self.writer:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def write_metrics(self, tag: str, metrics: dict[str, Any]) -> Path:
        return self.write_json(Path("eval") / tag / "metrics.json", metrics)

    def write_json(self, relative: str | Path, data: Any) -> Path:
        path = self.root / relative
        if self.writer:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_text(path, json.dumps(data, indent=2, sort_keys=True))
        return path

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
