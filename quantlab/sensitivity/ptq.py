"""Weight-only post-training quantization at a target average precision (papers.md C):
per-layer sensitivities from one of several traces, bits per layer by the ILP, then the
symmetric max-abs quantizer of eq. 6 on the weights, activations float, and evaluation.

Schemes (`ptq.schemes`):
- uniform: every layer at the target bits;
- loss: Hutchinson trace of the training loss (HAWQ-V2);
- output_float / output_quant: Hutchinson trace of the distillation loss to the float
  model, at the float weights / at the 8-bit weights W_q (error then measured from W_q);
- fisher_overall / fisher_critical: squared-gradient Fisher trace of the training loss /
  of the task's critical-category loss.
Omega_l(b) = tr_l / n_l x ||Q_b(W_l) - R_l||^2. Traces use `ptq.images` class-balanced
training images (the task picks them), split over the ranks and averaged.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Callable

import torch

from quantlab.engine import distributed as dist
from quantlab.engine.children import evaluate_child
from quantlab.engine.logbook import Logbook
from quantlab.engine.task import Task, to_device
from quantlab.engine.trainer import Trainer
from quantlab.mqat.ledger import Ledger
from quantlab.mqat.tables import save_tables
from quantlab.quant.editing import candidates, weight_tensors
from quantlab.quant.quantizers import symmetric_linear
from quantlab.sensitivity.distillation import distillation_loss
from quantlab.sensitivity.fisher import fisher_traces
from quantlab.sensitivity.hessian import hutchinson_traces
from quantlab.sensitivity.ilp import average_bits
from quantlab.sensitivity.tables import detr_ptq

SCHEMES = ("uniform", "loss", "output_float", "output_quant", "fisher_overall", "fisher_critical")


def layer_tensors(model: torch.nn.Module, cfg: dict, groups: dict[str, str]) -> dict[str, list[torch.Tensor]]:
    """The weight tensors of every quantizable layer outside `quantize.exclude` (an
    attention layer has two: its packed input projection and its output projection)."""
    return {name: weight_tensors(m) for name, m in candidates(model, cfg["quantize"]["exclude"], groups).items()}


def _flat(tensors: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{name}#{i}": t for name, ts in tensors.items() for i, t in enumerate(ts)}


def _per_layer(values: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, v in values.items():
        layer = key.rsplit("#", 1)[0]
        out[layer] = out.get(layer, 0.0) + v
    return out


def scheme_traces(scheme: str, trainer: Trainer, tensors: dict[str, list[torch.Tensor]], indices: list[int],
                  settings: dict, seed: int) -> dict[str, float]:
    """This rank's per-layer traces of `scheme` over its share of `indices` (one image a
    batch), averaged over ranks."""
    task, model, device = trainer.task, trainer.model, trainer.device
    data = task.dataset("train", train=False)
    batches = [to_device(task.collate([data[i]]), device) for i in indices[trainer.world.rank::trainer.world.size]]
    model.eval()
    flat = _flat(tensors)
    saved = None
    if scheme == "output_quant":
        saved = {k: t.detach().clone() for k, t in flat.items()}
    with torch.no_grad():
        teachers = [task.forward(model, b) for b in batches] if scheme.startswith("output") else []
        if saved is not None:
            for k, t in flat.items():
                t.copy_(symmetric_linear(t, settings["reference_bits"]))

    def closure(batch, index) -> Callable[[], torch.Tensor]:
        if scheme.startswith("output"):
            return lambda: distillation_loss(task.forward(model, batch), teachers[index], settings["temperature"],
                                             settings["kl_weight"])
        loss = task.critical_loss if scheme == "fisher_critical" else task.loss
        return lambda: sum(loss(task.forward(model, batch), batch).values())
    closures = [closure(b, i) for i, b in enumerate(batches)]
    trainable = {k: t.requires_grad for k, t in flat.items()}
    for t in flat.values():
        t.requires_grad_(True)  # frozen layers (DETR's stem and layer1) get a trace too
    if scheme.startswith("fisher"):
        local = fisher_traces(flat, closures)
    else:
        local = hutchinson_traces(flat, closures, settings["samples"], seed + trainer.world.rank)
    for k, t in flat.items():
        t.requires_grad_(trainable[k])
    if saved is not None:
        with torch.no_grad():
            for k, t in flat.items():
                t.copy_(saved[k])
    return dist.allreduce_mean(_per_layer(local), name=f"ptq.traces.{scheme}")


def sensitivities(tensors: dict[str, list[torch.Tensor]], traces: dict[str, float], bits: list[int],
                  reference_bits: int | None) -> dict[str, dict[int, float]]:
    """Omega_l(b) = tr_l / n_l x sum over the layer's tensors of ||Q_b(W) - R||^2, with R
    the float weights, or their `reference_bits` quantization (output_quant)."""
    out = {}
    with torch.no_grad():
        for name, ts in tensors.items():
            n = sum(t.numel() for t in ts)
            refs = [symmetric_linear(t, reference_bits) if reference_bits else t for t in ts]
            out[name] = {b: traces[name] / n * sum(float(((symmetric_linear(t, b) - r) ** 2).sum())
                                                   for t, r in zip(ts, refs)) for b in bits}
    return out


def average_precision(bits: dict[str, int], counts: dict[str, int]) -> float:
    """Bits per weight element over the quantizable layers; a layer without bits is float (32)."""
    return sum(counts[n] * bits.get(n, 32) for n in counts) / sum(counts.values())


def allocate(scheme: str, target: int, tensors: dict[str, list[torch.Tensor]], counts: dict[str, int],
             traces: dict[str, dict], settings: dict) -> dict[str, int]:
    if scheme == "uniform":
        return {name: target for name in tensors}
    low, high = settings["ranges"][target]
    sens = sensitivities(tensors, traces[scheme], list(range(low, high + 1)),
                         settings["reference_bits"] if scheme == "output_quant" else None)
    return average_bits(sens, counts, float(target)).bits


def float_traces(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device, init: Path,
                 schemes: list[str], ledger: Ledger) -> tuple[Trainer, dict[str, list[torch.Tensor]], dict[str, int]]:
    """The float model at `init` (child `float`), its layers' weight tensors and sizes, and
    the traces of `schemes` in `ledger` (computed once: a resumed run keeps them)."""
    float_cfg = copy.deepcopy(cfg)
    float_cfg["quantize"]["rules"] = []
    probe = Trainer(task, float_cfg, world, logbook.child("float"), device, init=init)
    probe.sync()
    tensors = layer_tensors(probe.model, cfg, task.groups)
    counts = {name: sum(t.numel() for t in ts) for name, ts in tensors.items()}
    indices = task.balanced_sample(cfg["ptq"]["images"], cfg["seed"])
    for scheme in schemes:
        if scheme != "uniform" and scheme not in ledger:
            ledger.record(scheme, scheme_traces(scheme, probe, tensors, indices, cfg["ptq"], cfg["seed"]))
    return probe, tensors, counts


def run_ptq(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device, init: Path) -> dict:
    """Every scheme at every target (and uniform at `reference_bits`), each evaluated once
    (`ptq/results.json`, resumable); traces in `ptq/traces.json`."""
    settings = cfg["ptq"]
    results = Ledger(logbook.root / "ptq" / "results.json", writer=world.is_main)
    traces = Ledger(logbook.root / "ptq" / "traces.json", writer=world.is_main)
    probe, tensors, counts = float_traces(task, cfg, world, logbook, device, init, settings["schemes"], traces)
    plans = [("float", 32)] + [("uniform", settings["reference_bits"])]
    plans += [(s, t) for t in settings["targets"] for s in settings["schemes"]]
    for scheme, target in plans:
        key = f"{scheme}@{target}"
        if key in results:
            continue
        bits = {} if scheme == "float" else allocate(scheme, target, tensors, counts, traces.entries, settings)
        average = average_precision(bits, counts)
        rules = [{"modules": re.escape(layer), "algorithm": "symmetric", "bits": b} for layer, b in bits.items()]
        metrics = evaluate_child(task, cfg, world, logbook.child(f"ptq/{scheme}_{target}"), device, init, rules,
                                 "ptq")
        results.record(key, {"scheme": scheme, "target": target, "bits": bits, "average_bits": average,
                             "metrics": metrics})
        if world.is_main:
            print(f"PTQ {scheme:<16} at {target:>2} bits (average {average:.2f}): {task.best_metric} "
                  f"{metrics[task.best_metric]:.2f}", flush=True)
    probe.close()
    markdown = save_tables(logbook.root, [detr_ptq(logbook.root, task.best_metric, task.published,
                                                    settings["schemes"])], world.is_main)
    if world.is_main:
        print(f"\n{markdown}\n\ntables written to {logbook.root / 'tables'}", flush=True)
    return results.entries
