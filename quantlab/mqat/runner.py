"""MQAT candidate runs as child experiments: quantize modules stage by stage, fine-tune,
evaluate. Each stage is a full data-parallel training over all Horovod ranks, started from
the previous stage's checkpoint (the float checkpoint for the first), so a stage's
quantized layers carry over and a finished stage is never trained again. Finished
candidates are kept in a ledger, keyed canonically, so an interrupted search resumes; with
a claimed ledger, jobs sharing the search run each candidate once (engine.claims).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlab.engine.claims import PENDING, Claimed
from quantlab.engine.config import child_config
from quantlab.engine.context import RunContext
from quantlab.engine.runs import evaluate_child, evaluation_at, final_evaluation, fit_child
from quantlab.mqat.search import Run
from quantlab.quant.algorithms import check_epochs
from quantlab.quant.editing import layer_rules
from quantlab.quant.layers import FLOAT_BITS
from quantlab.records import Ledger

FINETUNE = "finetune"  # the tag of a run that quantizes nothing: float fine-tuning alone


@dataclass(frozen=True)
class Candidate:
    """One staged run of a search: bits per module, the flow (None: every quantized module
    in one stage) and the quantizer family when it is not MQAT's own (the uniform
    baselines). Its `key` names it in the ledger, its `folder` under `children/`."""
    bits: tuple[tuple[str, int], ...]
    order: tuple[str, ...] | None
    algorithm: str | None = None

    @classmethod
    def of(cls, bits: dict[str, int], order: list[str] | None, algorithm: str | None = None) -> "Candidate":
        return cls(tuple(sorted(bits.items())), None if order is None else tuple(order), algorithm)

    @property
    def key(self) -> str:
        """E.g. 'backbone=32,fpn=2,head=32|fpn>head>backbone' (order part empty when
        unordered), prefixed 'lsq:' for another family than MQAT's own."""
        part = ",".join(f"{m}={b}" for m, b in self.bits)
        return f"{self.algorithm + ':' if self.algorithm else ''}{part}|{'>'.join(self.order or ())}"

    @property
    def folder(self) -> str:
        """E.g. 'lsq_backbone32_fpn2_head32__fpn-head-backbone': the key in characters a
        folder name takes."""
        part = "_".join(f"{m}{b}" for m, b in self.bits)
        return f"{self.algorithm + '_' if self.algorithm else ''}{part}__{'-'.join(self.order or ())}"


def cached(ledger: Ledger | Claimed, run: Run, algorithm: str | None = None) -> Run:
    """`run` that answers finished candidates from the ledger and records new ones (one
    job per candidate when the ledger is claimed; PENDING where another job holds it)."""
    def wrapped(bits: dict[str, int], order: list[str] | None) -> dict[str, Any]:
        entry = ledger.obtain(Candidate.of(bits, order, algorithm).key, lambda: {"bits": bits, "order": order,
                                                                             **run(bits, order)})
        return PENDING if entry is None else entry
    return wrapped


def float_entry(ctx: RunContext, ledger: Ledger | Claimed) -> dict[str, Any]:
    """The float start's metrics on the evaluation split and where they were scored
    (recorded like a candidate)."""
    def evaluate(bits: dict[str, int], order: list[str] | None) -> dict:
        child = ctx.child("float")
        metrics = evaluate_child(child, ctx.start, [], "float")
        return {"metric": metrics[ctx.task.best_metric], "metrics": metrics,
                "evaluation": evaluation_at(child, "float")}
    return cached(ledger, evaluate)({m: FLOAT_BITS for m in ctx.task.groups}, None)


class StagedRuns:
    """`run(bits, order)` for the searches of quantlab.mqat.search; `algorithm` and
    `epochs` default to `mqat.algorithm` and `mqat.stage_epochs` (baselines change them).
    Stages must finish their family's schedule (INQ's `quantize.inq_schedule`) in their
    epochs: checked here, before any of them runs."""

    def __init__(self, ctx: RunContext, algorithm: str | None = None, epochs: int | None = None) -> None:
        self.ctx = ctx
        self.modules = list(ctx.task.groups)
        self.algorithm = algorithm
        self.epochs = epochs or ctx.cfg["mqat"]["stage_epochs"]
        if algorithm != FINETUNE:  # quantizes nothing: no schedule to finish
            check_epochs(algorithm or ctx.cfg["mqat"]["algorithm"], ctx.cfg["quantize"], self.epochs,
                         "mqat.stage_epochs" if epochs is None else "an MQAT baseline")

    def stage_config(self, modules: list[str], bits: dict[str, int], source: Path) -> dict:
        rules = layer_rules({m: bits[m] for m in modules}, self.algorithm or self.ctx.cfg["mqat"]["algorithm"])
        return child_config(self.ctx.cfg, str(source), rules, self.epochs)

    def stages(self, bits: dict[str, int], order: list[str] | None) -> list[list[str]]:
        """One stage per module in the flow `order`; without an order, one stage for all
        (with no module quantized: one float fine-tuning stage)."""
        if order is None:
            return [[m for m in self.modules if bits[m] != FLOAT_BITS]]
        return [[m] for m in order if bits[m] != FLOAT_BITS]

    def __call__(self, bits: dict[str, int], order: list[str] | None) -> dict[str, Any]:
        name = Candidate.of(bits, order, self.algorithm).folder
        source, metrics, child = self.ctx.start, None, None
        for index, modules in enumerate(self.stages(bits, order), start=1):
            child = self.ctx.child(f"{name}/stage{index}", self.stage_config(modules, bits, source))
            metrics = fit_child(child, source)
            source = child.logbook.saves / "last.pt"
        if child is None:
            raise ValueError(f"candidate {bits} in flow {order} has no stage")
        return {"metric": metrics[self.ctx.task.best_metric], "metrics": metrics, "experiment": str(child.logbook.root),
                "evaluation": final_evaluation(child)}


def staged(ctx: RunContext, ledger: Ledger | Claimed, algorithm: str | None = None, epochs: int | None = None) -> Run:
    """The ledger-cached staged runs of `algorithm` (None: MQAT's own)."""
    return cached(ledger, StagedRuns(ctx, algorithm, epochs), algorithm)
