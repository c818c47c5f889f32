"""--mode hawq: the HAWQ-V3 baseline. Hessian traces of the float model, the sensitivity
of every layer at every candidate bit-width, the ILP under `hawq.min_compression`, then
QAT at the chosen bits in the child `qat`, the float start scored in the child `float`,
and the `hawq` table (float vs HAWQ-V3 beside the paper's point)."""
from __future__ import annotations

from pathlib import Path

from quantlab.engine.context import RunContext
from quantlab.engine.runs import evaluate_child, evaluation_at
from quantlab.hawq.allocation import run_hawq, shares
from quantlab.metrics.intervals import Evidence
from quantlab.modes import Mode, publish
from quantlab.mqat.tables import nearest_point
from quantlab.records import Table, TableSpec, read_json


def run(ctx: RunContext) -> None:
    """`run_hawq`, then the float start's evaluation (what the table pairs HAWQ-V3 with) and the table."""
    result = run_hawq(ctx)
    if "float_evaluation" not in result:
        reference = ctx.child("float")
        metrics = evaluate_child(reference, ctx.start, [], "float")
        result.update(float_metric=metrics[ctx.task.best_metric], float_metrics=metrics,
                      float_evaluation=evaluation_at(reference, "float"))
        ctx.logbook.write_json("hawq/allocation.json", result)
    publish(ctx, TABLES)


def table(folder: Path, task, cfg: dict) -> Table:
    """Float and HAWQ-V3 with their intervals and HAWQ-V3's paired change, beside the paper's
    point of each method nearest to the budget (as the MQAT compression table matches it)."""
    found, metric = read_json(folder / "hawq" / "allocation.json"), task.best_metric
    evidence, reference = Evidence(folder, task, cfg), found.get("float_evaluation")
    budget = cfg["hawq"]["min_compression"]
    rows = []
    for method, bits, ratio, value, where in (
            ("float", "FP", 1.0, found.get("float_metric"), reference),
            ("HAWQ-V3", shares(found["bits"]) if found else None, found.get("compression"), found.get("metric"),
             found.get("evaluation"))):
        change = None if method == "float" else evidence.change(value, where, found.get("float_metric"), reference,
                                                                 metric)
        rows.append([method, bits, ratio, evidence.estimate(value, where, metric, reference), change,
                     *nearest_point(task.published, method, 1.0 if method == "float" else budget)])
    return Table("hawq", f"HAWQ-V3 at >= {budget:g}x, {metric} (paper: its point nearest the budget)",
                 ["method", "bits per layer", "compression", "ours", "ours change", "paper compression", "paper"],
                 rows, [f"HAWQ-V3 traces: {found['trace_note']}"] if found.get("trace_note") else [])


TABLES = (TableSpec("hawq", "hawq", table),)
MODE = Mode("hawq", "the HAWQ-V3 baseline: Hessian traces, ILP bits per layer, QAT at those bits", run,
            section="hawq", tables=TABLES, trains=True, children=True, needs_start=True)
