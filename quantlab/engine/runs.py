"""Runs inside an experiment: child trainings and evaluations of a search (each in
`children/<name>/`, resumed where an interrupted search left it, never trained again once
finished), and the float model a probe measures."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import NamedTuple

import torch

from quantlab.engine import checkpoint
from quantlab.engine.context import RunContext
from quantlab.engine.trainer import Trainer, epoch_tag, read_weights


class Child(NamedTuple):
    """One child run of a search as a campaign plans it: its part, a name, and what it
    costs: training epochs and further training-image passes (traces) of a quantized or
    float model, and evaluations of the evaluation split."""
    part: str
    name: str
    epochs: float
    quantized: bool = True
    images: int = 0
    evals: int = 1


def fit_child(ctx: RunContext, source: Path) -> dict[str, float]:
    """Train the child `ctx` from `source` to its configured epochs (or finish it) and
    return its last metrics; a finished child only returns what its checkpoint recorded."""
    last = ctx.logbook.saves / "last.pt"
    if last.is_file():
        state = checkpoint.load(last)
        if state["epoch"] >= ctx.cfg["training"]["epochs"] and not state.get("eval_due", False):
            return state["metrics"]
    else:
        ctx.logbook.create(ctx.cfg)
    trainer = Trainer(ctx, init=None if last.is_file() else source, resume=last if last.is_file() else None)
    try:
        if last.is_file():
            trainer.resume()
        return trainer.fit()
    finally:
        trainer.close()


def evaluation_at(ctx: RunContext, tag: str) -> str:
    """The evaluation `tag` of the run `ctx` as records name it: its folder relative to
    the search's folder (the tables read its per-image results there)."""
    return ctx.logbook.relative(ctx.logbook.evals / tag)


def final_evaluation(ctx: RunContext) -> str:
    """Where the child `ctx` scored the metrics `fit_child` returns: its last epoch."""
    return evaluation_at(ctx, epoch_tag(ctx.cfg["training"]["epochs"]))


def evaluate_child(ctx: RunContext, source: Path, rules: list[dict], tag: str) -> dict[str, float]:
    """Evaluate `source` quantized by `rules` (none: as it is), without training, in the
    child `ctx`."""
    cfg = copy.deepcopy(ctx.cfg)
    cfg["quantize"]["rules"] = rules
    child = dataclasses.replace(ctx, cfg=cfg)
    child.logbook.create(cfg)
    trainer = Trainer(child, init=source)
    try:
        trainer.sync()
        return trainer.evaluate(cfg["engine"]["eval_split"], tag, quiet=True)
    finally:
        trainer.close()


def load_model(ctx: RunContext, source: Path) -> torch.nn.Module:
    """The network with the weights of `source` (any layout checkpoint.read_weights reads),
    on the run's device: what a probe (Hessian or Fisher traces) measures. Every rank reads
    the same file, so every rank holds the same model; no optimizer, no TensorBoard."""
    model = ctx.task.build_network()
    read_weights(ctx, model, source)
    return model.to(ctx.device)
