"""Each scheme's per-layer traces and bits: the traces over training images (split over
the ranks, pooled, each with its standard error), the ILP within `ptq.ranges`, and the
ledger that computes a scheme's traces once for every job sharing the experiment."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from quantlab.engine import distributed as dist
from quantlab.engine.claims import Claimed
from quantlab.engine.context import RunContext
from quantlab.engine.runs import load_model
from quantlab.engine.task import to_device
from quantlab.errors import ConfigError
from quantlab.ptq.schemes import SCHEMES, Scheme
from quantlab.quant.editing import quantizable_weights
from quantlab.quant.layers import FLOAT_BITS
from quantlab.quant.quantizers import symmetric_linear
from quantlab.sensitivity.fisher import fisher_samples
from quantlab.sensitivity.hessian import hutchinson_samples
from quantlab.sensitivity.ilp import average_bits
from quantlab.sensitivity.omega import flat, omega, per_layer
from quantlab.sensitivity.traces import Trace, moments, pooled, summary, used

Tensors = dict[str, list[torch.Tensor]]


def sample(task: object, count: int, seed: int) -> list[int]:
    """Training images for the traces: class-balanced where the task picks them, else a
    seeded draw."""
    if hasattr(task, "balanced_sample"):
        return task.balanced_sample(count, seed)
    total = len(task.dataset("train", train=False))
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].tolist()


@contextlib.contextmanager
def traced_weights(weights: dict[str, torch.Tensor], scheme: Scheme, reference_bits: int) -> Iterator[None]:
    """The weights `scheme` is traced at, every one with a gradient (frozen layers such as
    DETR's stem get a trace too); the float weights and flags are back afterwards."""
    trainable = {k: t.requires_grad for k, t in weights.items()}
    saved = {k: t.detach().clone() for k, t in weights.items()} if scheme.at_reference else {}
    with torch.no_grad():
        for k in saved:
            weights[k].copy_(symmetric_linear(weights[k], reference_bits))
    for t in weights.values():
        t.requires_grad_(True)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, t in saved.items():
                weights[k].copy_(t)
        for k, t in weights.items():
            t.requires_grad_(trainable[k])


def scheme_traces(ctx: RunContext, scheme: Scheme, model: torch.nn.Module, tensors: Tensors,
                  indices: list[int]) -> dict[str, dict]:
    """The per-layer traces of `scheme` over `indices` (one image a batch, split over the
    ranks, pooled), each with its standard error (quantlab.sensitivity.traces); the log
    says when some are negative or not significant. A distillation objective's teacher is
    the float model's output, taken before the weights change."""
    task, settings, world = ctx.task, ctx.cfg["ptq"], ctx.world
    data = task.dataset("train", train=False)
    batches = [to_device(task.collate([data[i]]), ctx.device) for i in indices[world.rank::world.size]]
    model.eval()
    weights = flat(tensors)
    with torch.no_grad():
        teachers = [task.forward(model, b) for b in batches] if scheme.teacher else []

    def closure(index: int) -> Callable[[], torch.Tensor]:
        batch = batches[index]
        if scheme.teacher:
            return lambda: task.distillation_loss(task.forward(model, batch), teachers[index])
        loss = task.critical_loss if scheme.objective == "critical" else task.loss
        return lambda: sum(loss(task.forward(model, batch), batch).values())
    closures = [closure(i) for i in range(len(batches))]
    with traced_weights(weights, scheme, settings["reference_bits"]):
        if scheme.estimator == "fisher":
            local = fisher_samples(weights, closures)
        else:
            local = hutchinson_samples(weights, closures, settings["samples"], ctx.cfg["seed"] + world.rank)
    averaged = dist.allreduce_mean(moments(per_layer(local)), name=f"ptq.traces.{scheme.name}")
    traces = pooled(averaged, world.size)
    note = summary(traces, settings["negative_traces"], "ptq.negative_traces")
    if note:
        ctx.say(f"traces of {scheme.name}: {note}")
    return {layer: trace.record() for layer, trace in traces.items()}


def average_precision(bits: dict[str, int], counts: dict[str, int]) -> float:
    """Bits per weight element over the quantizable layers; a layer without bits is float."""
    return sum(counts[n] * bits.get(n, FLOAT_BITS) for n in counts) / sum(counts.values())


def scheme_bits(name: str, target: int, tensors: Tensors, counts: dict[str, int], traces: dict[str, dict],
                settings: dict) -> dict[str, int]:
    """Bits per layer of scheme `name` at `target` average bits (the ILP within ptq.ranges;
    a scheme without traces gives every layer the target)."""
    scheme = SCHEMES[name]
    if scheme.estimator is None:
        return {layer: target for layer in tensors}
    if target not in settings["ranges"]:
        raise ConfigError(f"config key 'ptq.ranges': no bit range for the target {target} "
                          f"(ranges for {sorted(settings['ranges'])})")
    low, high = settings["ranges"][target]
    found = {layer: Trace.from_record(record) for layer, record in traces[name].items()}
    sens = omega(tensors, used(found, settings["negative_traces"]), list(range(low, high + 1)),
                 settings["reference_bits"] if scheme.at_reference else None)
    try:
        return average_bits(sens, counts, float(target)).bits
    except ValueError as exc:
        raise ConfigError(f"config key 'ptq.ranges': {target} average bits cannot be met with layers in "
                          f"{low}..{high} bits ({exc})") from None


def float_weights(ctx: RunContext) -> tuple[torch.nn.Module, Tensors, dict[str, int]]:
    """The float start, its quantizable weight tensors and their element counts."""
    model = load_model(ctx, ctx.start)
    tensors = quantizable_weights(model, ctx.cfg["quantize"]["exclude"], ctx.task.patterns)
    return model, tensors, {name: sum(t.numel() for t in ts) for name, ts in tensors.items()}


def traced(ctx: RunContext, traces: Claimed, name: str, model: torch.nn.Module,
           tensors: Tensors) -> dict[str, dict] | None:
    """`{name: its traces}` (none for a scheme without traces), computed once by one job:
    None while another job computes them (for a worker of their part)."""
    scheme = SCHEMES[name]
    if scheme.estimator is None:
        return {}
    found = traces.obtain(name, lambda: scheme_traces(ctx, scheme, model, tensors, sample(
        ctx.task, ctx.cfg["ptq"]["images"], ctx.cfg["seed"])))
    return None if found is None else {name: found}
