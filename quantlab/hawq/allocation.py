"""HAWQ-V3 (Yao et al., ICML 2021) as the MQAT paper's baseline: Hessian traces of the float
model, the sensitivity of every layer at every candidate bit-width, the ILP under
`hawq.min_compression`, then QAT at the chosen bits in a child run. Shared by --mode hawq
and the baselines of --mode mqat."""
from __future__ import annotations

import itertools

from quantlab.engine import distributed as dist
from quantlab.engine.config import child_config
from quantlab.engine.context import RunContext
from quantlab.engine.loaders import train_loader
from quantlab.engine.runs import final_evaluation, fit_child, load_model
from quantlab.engine.task import to_device
from quantlab.errors import ConfigError
from quantlab.quant.algorithms import check_epochs
from quantlab.quant.editing import layer_rules, quantizable_weights
from quantlab.quant.layers import FLOAT_BITS
from quantlab.records import read_json
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
    _, sampler, loader = train_loader(ctx, ctx.cfg["training"]["batch_size"], ctx.cfg["seed"])
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
    check_epochs(settings["algorithm"], ctx.cfg["quantize"], settings["epochs"], "hawq.epochs")
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
