"""--mode fisher: Fisher-aware mixed-precision QAT (Yang et al., Fisher-aware Quantization for DETR Detectors with Critical-category Objectives (2024)).

Each scheme picks bits per layer at one average-bit target: `uniform` gives every layer
the target, `fisher_overall` / `fisher_critical` solve the PTQ ILP (same ranges, same
quantization error) with the Fisher trace of the overall / the critical objective as
sensitivity. Each allocation is then trained by QAT from the float checkpoint once for
every Fisher-trace regularizer weight lambda (0 = none). Results, traces and allocations
are ledgers under `fisher/`, so an interrupted run resumes where it stopped, and jobs
sharing the experiment (`--worker runs`) take one QAT run each.
"""
from __future__ import annotations

from quantlab.engine.claims import Claimed, Jobs
from quantlab.engine.config import child_config
from quantlab.engine.context import RunContext
from quantlab.engine.runs import evaluate_child, evaluation_at, final_evaluation, fit_child
from quantlab.errors import ConfigError
from quantlab.modes import WORKER, Child, Mode, publish, task_tables
from quantlab.ptq.schemes import check_hooks
from quantlab.ptq.traces import average_precision, float_weights, scheme_bits, traced
from quantlab.quant.algorithms import check_epochs
from quantlab.quant.editing import layer_rules
from quantlab.quant.layers import FLOAT_BITS

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


def allocations(ctx: RunContext, jobs: Jobs) -> Claimed:
    """Bits per layer of every scheme at the target, and the float model's metrics, each
    computed once by one job (`fisher/allocations.json`)."""
    settings = ctx.cfg["fisher"]
    plans = jobs.ledger(ctx.logbook.root / "fisher" / "allocations.json")
    if all(s in plans for s in settings["schemes"]) and "float" in plans:
        return plans
    traces = jobs.ledger(ctx.logbook.root / "fisher" / "traces.json")
    model, tensors, counts = float_weights(ctx)

    def allocate(scheme: str) -> dict:
        trace = traced(ctx, traces, scheme, model, tensors)
        bits = scheme_bits(scheme, settings["target"], tensors, counts, trace, ctx.cfg["ptq"])
        return {"bits": bits, "average_bits": average_precision(bits, counts)}
    for scheme in settings["schemes"]:
        plans.obtain(scheme, lambda: allocate(scheme))
    reference = ctx.child("fisher/float")
    plans.obtain("float", lambda: {"bits": {}, "average_bits": float(FLOAT_BITS), "metrics": evaluate_child(
        reference, ctx.start, [], "float"), "evaluation": evaluation_at(reference, "float")})
    return plans


def run(ctx: RunContext) -> None:
    """Every scheme x regularizer weight: QAT at the scheme's bits in the child
    `fisher/<scheme>_lambda<weight>` (the part `runs`: jobs sharing the experiment take one
    each); results in `fisher/results.json`, then the table."""
    settings, task = ctx.cfg["fisher"], ctx.task
    check(task, settings, ctx.cfg["ptq"]["ranges"])
    check_epochs(settings["algorithm"], ctx.cfg["quantize"], settings["epochs"], "fisher.epochs")
    jobs = Jobs(ctx, "fisher", tuple(MODE.parts))
    plans = allocations(ctx, jobs)
    results = jobs.ledger(ctx.logbook.root / "fisher" / "results.json")

    def train(scheme: str, weight: float) -> dict:
        plan = plans.entries[scheme]
        cfg = child_config(ctx.cfg, str(ctx.start), layer_rules(plan["bits"], settings["algorithm"]),
                           settings["epochs"])
        cfg["quantize"]["fisher_regularizer"] = float(weight)
        child = ctx.child(f"fisher/{scheme}_lambda{weight:g}", cfg)
        metrics = fit_child(child, ctx.start)
        return {"scheme": scheme, "regularizer": weight, "average_bits": plan["average_bits"], "metrics": metrics,
                "evaluation": final_evaluation(child)}

    with jobs.part("runs"):
        for scheme in settings["schemes"]:
            twin = twin_of(settings["schemes"], plans.entries, scheme)
            for weight in settings["regularizers"]:
                if twin is None:
                    results.obtain(run_key(scheme, weight), lambda: train(scheme, weight))
                elif run_key(twin, weight) in results:  # the same bits train to the same model: reuse that run
                    results.obtain(run_key(scheme, weight), lambda: dict(results.entries[run_key(twin, weight)],
                                                                         scheme=scheme, same_as=twin))
    if jobs.stops_after("runs"):
        return
    for scheme in settings["schemes"]:
        twin, plan = twin_of(settings["schemes"], plans.entries, scheme), plans.entries[scheme]
        for weight in settings["regularizers"]:
            entry = results.entries[run_key(scheme, weight)]
            ctx.say(f"QAT {scheme:<16} lambda {weight:<6g} (average {plan['average_bits']:.2f} bits"
                    + (f", the bits of {twin}" if twin else "") + f"): {task.best_metric} "
                    f"{entry['metrics'][task.best_metric]:.2f}, {task.critical_metric} "
                    f"{entry['metrics'][task.critical_metric]:.2f}")
    publish(ctx, task_tables(ctx, "fisher"))


def twin_of(schemes: list[str], plans: dict[str, dict], scheme: str) -> str | None:
    """An earlier scheme that chose exactly the same bits (its runs are reused)."""
    return next((s for s in schemes[:schemes.index(scheme)] if plans[s]["bits"] == plans[scheme]["bits"]), None)


def fisher_children(cfg: dict, task: object) -> list[Child]:
    """One QAT run per scheme and regularizer weight (a twin scheme's cost counted too: the
    bits are not known before the traces), the first of each Fisher scheme with its traces."""
    settings = cfg["fisher"]
    children = []
    for scheme in settings["schemes"]:
        for i, weight in enumerate(settings["regularizers"]):
            images = cfg["ptq"]["images"] if scheme != "uniform" and i == 0 else 0
            children.append(Child("runs", run_key(scheme, weight), settings["epochs"], images=images))
    return children


MODE = Mode("fisher", "Fisher-aware mixed-precision QAT with and without the Fisher-trace regularizer", run,
            section="fisher", trains=True, children=True, needs_start=True, options=(WORKER,),
            parts={"runs": ()}, plan=fisher_children)
