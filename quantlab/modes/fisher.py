"""--mode fisher: Fisher-aware mixed-precision QAT (papers.md B).

Each scheme picks bits per layer at one average-bit target: `uniform` gives every layer
the target, `fisher_overall` / `fisher_critical` solve the PTQ ILP (same ranges, same
quantization error) with the Fisher trace of the overall / the critical objective as
sensitivity. Each allocation is then trained by QAT from the float checkpoint once for
every Fisher-trace regularizer weight lambda (0 = none). Results, traces and allocations
are ledgers under `fisher/`, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

from quantlab.engine.config import child_config
from quantlab.engine.context import RunContext
from quantlab.engine.runs import evaluate_child, fit_child
from quantlab.errors import ConfigError
from quantlab.modes import Mode, publish, task_tables
from quantlab.modes.ptq import average_precision, check_hooks, float_traces, scheme_bits
from quantlab.quant.editing import layer_rules
from quantlab.quant.layers import FLOAT_BITS
from quantlab.records import Ledger

SCHEMES = ("uniform", "fisher_overall", "fisher_critical")


def run_key(scheme: str, weight: float) -> str:
    return f"{scheme}@{weight:g}"


def check(task: object, settings: dict, ranges: dict) -> None:
    """What the schema cannot say about one key alone."""
    if settings["target"] not in ranges:
        raise ConfigError(f"config key 'fisher.target': {settings['target']} has no bit range in ptq.ranges "
                          f"(ranges for {sorted(ranges)})")
    if getattr(task, "critical_metric", None) is None:
        raise ConfigError(f"--mode fisher: {type(task).__name__} has no critical-category objective "
                          "(critical_metric, critical_loss)")
    check_hooks(task, settings["schemes"], "fisher.schemes")


def allocations(ctx: RunContext, plans: Ledger) -> None:
    """Bits per layer of every scheme at the target, and the float model's metrics."""
    settings = ctx.cfg["fisher"]
    if all(s in plans for s in settings["schemes"]) and "float" in plans:
        return
    traces = Ledger(ctx.logbook.root / "fisher" / "traces.json", writer=ctx.world.is_main)
    tensors, counts = float_traces(ctx, settings["schemes"], traces)
    for scheme in settings["schemes"]:
        if scheme not in plans:
            bits = scheme_bits(scheme, settings["target"], tensors, counts, traces.entries, ctx.cfg["ptq"])
            plans.record(scheme, {"bits": bits, "average_bits": average_precision(bits, counts)})
    if "float" not in plans:
        metrics = evaluate_child(ctx.child("fisher/float"), ctx.start, [], "float")
        plans.record("float", {"bits": {}, "average_bits": float(FLOAT_BITS), "metrics": metrics})


def run(ctx: RunContext) -> None:
    """Every scheme x regularizer weight: QAT at the scheme's bits in the child
    `fisher/<scheme>_lambda<weight>`; results in `fisher/results.json`, then the table."""
    settings, task = ctx.cfg["fisher"], ctx.task
    check(task, settings, ctx.cfg["ptq"]["ranges"])
    plans = Ledger(ctx.logbook.root / "fisher" / "allocations.json", writer=ctx.world.is_main)
    allocations(ctx, plans)
    results = Ledger(ctx.logbook.root / "fisher" / "results.json", writer=ctx.world.is_main)
    for scheme in settings["schemes"]:
        plan = plans.entries[scheme]
        twin = next((s for s in settings["schemes"][:settings["schemes"].index(scheme)]
                     if plans.entries[s]["bits"] == plan["bits"]), None)
        for weight in settings["regularizers"]:
            key = run_key(scheme, weight)
            if key in results:
                continue
            if twin is not None:  # the same bits train to the same model: reuse that run
                results.record(key, dict(results.entries[run_key(twin, weight)], scheme=scheme, same_as=twin))
                continue
            cfg = child_config(ctx.cfg, str(ctx.start), layer_rules(plan["bits"], settings["algorithm"]),
                               settings["epochs"])
            cfg["quantize"]["fisher_regularizer"] = float(weight)
            metrics = fit_child(ctx.child(f"fisher/{scheme}_lambda{weight:g}", cfg), ctx.start)
            results.record(key, {"scheme": scheme, "regularizer": weight, "average_bits": plan["average_bits"],
                                 "metrics": metrics})
        for weight in settings["regularizers"]:
            entry = results.entries[run_key(scheme, weight)]
            ctx.say(f"QAT {scheme:<16} lambda {weight:<6g} (average {plan['average_bits']:.2f} bits"
                    + (f", the bits of {twin}" if twin else "") + f"): {task.best_metric} "
                    f"{entry['metrics'][task.best_metric]:.2f}, {task.critical_metric} "
                    f"{entry['metrics'][task.critical_metric]:.2f}")
    publish(ctx, task_tables(ctx, "fisher"))


MODE = Mode("fisher", "Fisher-aware mixed-precision QAT with and without the Fisher-trace regularizer", run,
            section="fisher", trains=True, children=True, needs_start=True)
