"""--mode ptq: weight-only post-training quantization at target average precisions
(Huang et al., Output Sensitivity-Aware DETR Quantization). Per-layer sensitivities from one of several traces, bits per layer by the
ILP, the symmetric max-abs quantizer of eq. 6 on the weights (activations float), then
evaluation; `ptq/results.json` and `ptq/traces.json` are ledgers, so a continued run
skips what is finished.

Schemes (`ptq.schemes`):
- uniform: every layer at the target bits;
- loss: Hutchinson trace of the training loss (HAWQ-V2);
- output_float / output_quant: Hutchinson trace of the task's distillation loss to the
  float model, at the float weights / at the 8-bit weights W_q (error then from W_q);
- fisher_overall / fisher_critical: squared-gradient Fisher trace of the training loss /
  of the task's critical-category loss.
Traces use `ptq.images` training images (class-balanced where the task can pick them),
split over the ranks and averaged. Jobs sharing the experiment (`--worker schemes`) take
one scheme's traces or one evaluation at a time.
"""
from __future__ import annotations

from quantlab.engine.claims import Jobs
from quantlab.engine.context import RunContext
from quantlab.engine.runs import evaluate_child, evaluation_at
from quantlab.modes import WORKER, Child, Mode, publish, task_tables
from quantlab.ptq.schemes import SCHEMES, check_hooks
from quantlab.ptq.traces import average_precision, float_weights, scheme_bits, traced
from quantlab.quant.editing import layer_rules
from quantlab.quant.layers import FLOAT_BITS


def run(ctx: RunContext) -> None:
    """Every scheme at every target (and uniform at `reference_bits`), each evaluated once
    (the part `schemes`: jobs sharing the experiment take one traces or evaluation each)."""
    settings = ctx.cfg["ptq"]
    check_hooks(ctx.task, settings["schemes"], "ptq.schemes")
    jobs = Jobs(ctx, "ptq", tuple(MODE.parts))
    results = jobs.ledger(ctx.logbook.root / "ptq" / "results.json")
    traces = jobs.ledger(ctx.logbook.root / "ptq" / "traces.json")
    model, tensors, counts = float_weights(ctx)
    plans = [("float", FLOAT_BITS), ("uniform", settings["reference_bits"])]
    plans += [(s, t) for t in settings["targets"] for s in settings["schemes"]]

    def evaluate(scheme: str, target: int, trace: dict[str, dict]) -> dict:
        bits = {} if scheme == "float" else scheme_bits(scheme, target, tensors, counts, trace, settings)
        average = average_precision(bits, counts)
        child = ctx.child(f"ptq/{scheme}_{target}")
        metrics = evaluate_child(child, ctx.start, layer_rules(bits, "symmetric"), "ptq")
        ctx.say(f"PTQ {scheme:<16} at {target:>2} bits (average {average:.2f}): {ctx.task.best_metric} "
                f"{metrics[ctx.task.best_metric]:.2f}")
        return {"scheme": scheme, "target": target, "bits": bits, "average_bits": average, "metrics": metrics,
                "evaluation": evaluation_at(child, "ptq")}

    with jobs.part("schemes"):
        for scheme, target in plans:
            trace = {} if scheme == "float" else traced(ctx, traces, scheme, model, tensors)
            if trace is not None:
                results.obtain(f"{scheme}@{target}", lambda: evaluate(scheme, target, trace))
    if not jobs.stops_after("schemes"):
        publish(ctx, task_tables(ctx, "ptq"))


def ptq_children(cfg: dict, task: object) -> list[Child]:
    """One evaluation per scheme and target, the first of each traced scheme with its
    traces (`ptq.images` backward passes, `ptq.samples` each for the Hutchinson ones)."""
    settings = cfg["ptq"]
    plans = [("float", FLOAT_BITS), ("uniform", settings["reference_bits"])]
    plans += [(s, t) for t in settings["targets"] for s in settings["schemes"]]
    seen, children = set(), []
    for scheme, target in plans:
        images = 0
        estimator = None if scheme == "float" else SCHEMES[scheme].estimator
        if estimator is not None and scheme not in seen:
            seen.add(scheme)
            images = settings["images"] * (1 if estimator == "fisher" else settings["samples"])
        children.append(Child("schemes", f"{scheme}@{target}", 0, quantized=scheme != "float", images=images))
    return children


MODE = Mode("ptq", "weight-only PTQ at average-bit targets, every sensitivity scheme", run, section="ptq",
            needs_start=True, options=(WORKER,), parts={"schemes": ()}, plan=ptq_children)
