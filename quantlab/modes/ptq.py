"""--mode ptq: weight-only post-training quantization at target average precisions
(papers.md C). Per-layer sensitivities from one of several traces, bits per layer by the
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

from typing import Callable

import torch

from quantlab.engine import distributed as dist
from quantlab.engine.claims import Claimed, Jobs
from quantlab.engine.context import RunContext
from quantlab.engine.runs import evaluate_child, evaluation_at, load_model
from quantlab.engine.task import to_device
from quantlab.errors import ConfigError
from quantlab.modes import WORKER, Child, Mode, publish, task_tables
from quantlab.quant.editing import layer_rules, quantizable_weights
from quantlab.quant.layers import FLOAT_BITS
from quantlab.quant.quantizers import symmetric_linear
from quantlab.sensitivity.fisher import fisher_samples
from quantlab.sensitivity.hessian import hutchinson_samples
from quantlab.sensitivity.ilp import average_bits
from quantlab.sensitivity.omega import flat, omega, per_layer
from quantlab.sensitivity.traces import Trace, moments, pooled, summary, used

SCHEMES = ("uniform", "loss", "output_float", "output_quant", "fisher_overall", "fisher_critical")
#: the optional task hook each scheme needs (quantlab.engine.task)
NEEDS = {"output_float": "distillation_loss", "output_quant": "distillation_loss",
         "fisher_critical": "critical_loss"}


def check_hooks(task: object, schemes: list[str], key: str) -> None:
    for scheme in schemes:
        hook = NEEDS.get(scheme)
        if hook is not None and not hasattr(task, hook):
            raise ConfigError(f"config key '{key}': {scheme} needs the task's {hook}, which "
                              f"{type(task).__name__} does not have")


def sample(task: object, count: int, seed: int) -> list[int]:
    """Training images for the traces: class-balanced where the task picks them, else a
    seeded draw."""
    if hasattr(task, "balanced_sample"):
        return task.balanced_sample(count, seed)
    total = len(task.dataset("train", train=False))
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].tolist()


def scheme_traces(ctx: RunContext, scheme: str, model: torch.nn.Module, tensors: dict[str, list[torch.Tensor]],
                  indices: list[int]) -> dict[str, dict]:
    """The per-layer traces of `scheme` over `indices` (one image a batch, split over the
    ranks, pooled), each with its standard error (quantlab.sensitivity.traces); the log
    says when some are negative or not significant."""
    task, settings, world = ctx.task, ctx.cfg["ptq"], ctx.world
    data = task.dataset("train", train=False)
    batches = [to_device(task.collate([data[i]]), ctx.device) for i in indices[world.rank::world.size]]
    model.eval()
    weights = flat(tensors)
    saved = None
    if scheme == "output_quant":
        saved = {k: t.detach().clone() for k, t in weights.items()}
    with torch.no_grad():
        teachers = [task.forward(model, b) for b in batches] if scheme.startswith("output") else []
        if saved is not None:
            for t in weights.values():
                t.copy_(symmetric_linear(t, settings["reference_bits"]))

    def closure(batch, index) -> Callable[[], torch.Tensor]:
        if scheme.startswith("output"):
            return lambda: task.distillation_loss(task.forward(model, batch), teachers[index])
        loss = task.critical_loss if scheme == "fisher_critical" else task.loss
        return lambda: sum(loss(task.forward(model, batch), batch).values())
    closures = [closure(b, i) for i, b in enumerate(batches)]
    trainable = {k: t.requires_grad for k, t in weights.items()}
    for t in weights.values():
        t.requires_grad_(True)  # frozen layers (DETR's stem and layer1) get a trace too
    if scheme.startswith("fisher"):
        local = fisher_samples(weights, closures)
    else:
        local = hutchinson_samples(weights, closures, settings["samples"], ctx.cfg["seed"] + world.rank)
    for k, t in weights.items():
        t.requires_grad_(trainable[k])
    if saved is not None:
        with torch.no_grad():
            for k, t in weights.items():
                t.copy_(saved[k])
    averaged = dist.allreduce_mean(moments(per_layer(local)), name=f"ptq.traces.{scheme}")
    traces = pooled(averaged, world.size)
    note = summary(traces, settings["negative_traces"], "ptq.negative_traces")
    if note:
        ctx.say(f"traces of {scheme}: {note}")
    return {layer: trace.record() for layer, trace in traces.items()}


def average_precision(bits: dict[str, int], counts: dict[str, int]) -> float:
    """Bits per weight element over the quantizable layers; a layer without bits is float."""
    return sum(counts[n] * bits.get(n, FLOAT_BITS) for n in counts) / sum(counts.values())


def scheme_bits(scheme: str, target: int, tensors: dict[str, list[torch.Tensor]], counts: dict[str, int],
                traces: dict[str, dict], settings: dict) -> dict[str, int]:
    """Bits per layer of `scheme` at `target` average bits (the ILP within ptq.ranges)."""
    if scheme == "uniform":
        return {name: target for name in tensors}
    if target not in settings["ranges"]:
        raise ConfigError(f"config key 'ptq.ranges': no bit range for the target {target} "
                          f"(ranges for {sorted(settings['ranges'])})")
    low, high = settings["ranges"][target]
    found = {layer: Trace.from_record(record) for layer, record in traces[scheme].items()}
    sens = omega(tensors, used(found, settings["negative_traces"]), list(range(low, high + 1)),
                 settings["reference_bits"] if scheme == "output_quant" else None)
    try:
        return average_bits(sens, counts, float(target)).bits
    except ValueError as exc:
        raise ConfigError(f"config key 'ptq.ranges': {target} average bits cannot be met with layers in "
                          f"{low}..{high} bits ({exc})") from None


def float_weights(ctx: RunContext) -> tuple[torch.nn.Module, dict[str, list[torch.Tensor]], dict[str, int]]:
    """The float start, its quantizable weight tensors and their element counts."""
    model = load_model(ctx, ctx.start)
    tensors = quantizable_weights(model, ctx.cfg["quantize"]["exclude"], ctx.task.patterns)
    return model, tensors, {name: sum(t.numel() for t in ts) for name, ts in tensors.items()}


def traced(ctx: RunContext, traces: Claimed, scheme: str, model: torch.nn.Module,
           tensors: dict[str, list[torch.Tensor]]) -> dict[str, dict] | None:
    """`{scheme: its traces}` (none for uniform), computed once by one job: None while
    another job computes them (for a worker of their part)."""
    if scheme == "uniform":
        return {}
    found = traces.obtain(scheme, lambda: scheme_traces(ctx, scheme, model, tensors, sample(
        ctx.task, ctx.cfg["ptq"]["images"], ctx.cfg["seed"])))
    return None if found is None else {scheme: found}


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
    traced, children = set(), []
    for scheme, target in plans:
        images = 0
        if scheme not in ("float", "uniform") and scheme not in traced:
            traced.add(scheme)
            images = settings["images"] * (1 if scheme.startswith("fisher") else settings["samples"])
        children.append(Child("schemes", f"{scheme}@{target}", 0, quantized=scheme != "float", images=images))
    return children


MODE = Mode("ptq", "weight-only PTQ at average-bit targets, every sensitivity scheme", run, section="ptq",
            needs_start=True, options=(WORKER,), parts={"schemes": ()}, plan=ptq_children)
