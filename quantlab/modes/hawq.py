"""--mode hawq: the HAWQ-V3 baseline. Hessian traces of the float model, the sensitivity
of every layer at every candidate bit-width, the ILP under `hawq.min_compression`, then
QAT at the chosen bits in the child `qat`, the float start scored in the child `float`,
and the `hawq` table (float vs HAWQ-V3 beside the paper's point)."""
from __future__ import annotations

import itertools
from pathlib import Path

from quantlab.engine import distributed as dist
from quantlab.engine.config import child_config
from quantlab.engine.context import RunContext
from quantlab.engine.loaders import train_loader
from quantlab.engine.runs import evaluate_child, evaluation_at, final_evaluation, fit_child, load_model
from quantlab.engine.task import to_device
from quantlab.errors import ConfigError
from quantlab.metrics.intervals import Evidence
from quantlab.modes import Mode, publish
from quantlab.mqat.tables import nearest_point
from quantlab.quant.editing import layer_rules, quantizable_weights
from quantlab.quant.layers import FLOAT_BITS
from quantlab.quant.qat import inq_finishes
from quantlab.records import Table, TableSpec, read_json
from quantlab.sensitivity.hessian import hutchinson_samples
from quantlab.sensitivity.ilp import Problem, solve
from quantlab.sensitivity.omega import flat, omega, per_layer
from quantlab.sensitivity.traces import moments, pooled, summary, used


def allocation(ctx: RunContext) -> dict:
    """Per-layer Hessian traces of the training loss at the float start (this rank's first
    `hawq.batches` training batches, `hawq.samples` Hutchinson vectors each, averaged over
    ranks), the sensitivities, and the ILP's bits."""
    settings, task = ctx.cfg["hawq"], ctx.task
    model = load_model(ctx, ctx.start).eval()
    tensors = quantizable_weights(model, ctx.cfg["quantize"]["exclude"], task.patterns)
    _, sampler, loader = train_loader(ctx)
    sampler.set_epoch(0)

    def loss_of(batch):
        return lambda: sum(task.loss(task.forward(model, batch), batch).values())
    closures = [loss_of(to_device(b, ctx.device)) for b in itertools.islice(loader, settings["batches"])]
    local = hutchinson_samples(flat(tensors), closures, settings["samples"], ctx.cfg["seed"] + ctx.world.rank)
    traces = pooled(dist.allreduce_mean(moments(per_layer(local)), name="hawq.traces"), ctx.world.size)
    note = summary(traces, settings["negative_traces"], "hawq.negative_traces")
    if note:
        ctx.say(f"HAWQ-V3 traces: {note}")
    bits = sorted(settings["bits"])
    sensitivity = omega(tensors, used(traces, settings["negative_traces"]), bits)
    counts = {name: sum(t.numel() for t in ts) for name, ts in tensors.items()}
    size = {name: {b: float(n * b) for b in bits} for name, n in counts.items()}
    total = sum(p.numel() for p in model.parameters())
    float_bits, rest_bits = FLOAT_BITS * total, FLOAT_BITS * (total - sum(counts.values()))
    budget = float_bits / settings["min_compression"] - rest_bits
    try:
        chosen = solve(Problem(sensitivity, size, budget, dict(settings["fixed"]), [list(g) for g in settings["tied"]]))
    except ValueError as exc:
        lowest = float_bits / (rest_bits + sum(n * bits[0] for n in counts.values()))
        raise ConfigError(f"config key 'hawq.min_compression': {settings['min_compression']:g}x cannot be met "
                          f"({exc}; every layer at {bits[0]} bits gives {lowest:.2f}x)") from None
    compression = float_bits / (chosen.size + rest_bits)
    ctx.say(f"HAWQ-V3 allocation over {len(tensors)} layers at >= {settings['min_compression']}x: "
            f"{shares(chosen.bits)}; compression {compression:.2f}x")
    return {"traces": {layer: t.record() for layer, t in traces.items()}, "trace_note": note,
            "sensitivity": sensitivity, "bits": chosen.bits, "objective": chosen.objective, "compression": compression}


def shares(bits: dict[str, int]) -> str:
    """How many layers got each bit-width, e.g. `4 x 2-bit, 30 x 8-bit`."""
    return ", ".join(f"{list(bits.values()).count(b)} x {b}-bit" for b in sorted(set(bits.values())))


def run_hawq(ctx: RunContext) -> dict:
    """The allocation (`hawq/allocation.json`), then QAT at its bits in the child `qat`;
    a resumed run keeps a finished allocation and continues the QAT child."""
    settings = ctx.cfg["hawq"]
    if settings["algorithm"] == "inq":
        inq_finishes(ctx.cfg["quantize"]["inq_schedule"], settings["epochs"], "hawq.epochs")
    result = read_json(ctx.logbook.root / "hawq" / "allocation.json")
    if not result:
        result = allocation(ctx)
        ctx.logbook.write_json("hawq/allocation.json", result)
    child = ctx.child("qat", child_config(ctx.cfg, str(ctx.start), layer_rules(result["bits"], settings["algorithm"]),
                                          settings["epochs"]))
    metrics = fit_child(child, ctx.start)
    result.update(metric=metrics[ctx.task.best_metric], metrics=metrics, experiment=str(child.logbook.root),
                  evaluation=final_evaluation(child))
    ctx.logbook.write_json("hawq/allocation.json", result)
    return result


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
