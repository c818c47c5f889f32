"""The HAWQ-V3 baseline mode: Hessian traces of the float model, sensitivities per
candidate bit-width, the ILP under a compression budget, then QAT at the chosen bits."""
from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path

import torch

from quantlab.engine import distributed as dist
from quantlab.engine.children import fit_child
from quantlab.engine.config import child_config
from quantlab.engine.logbook import Logbook
from quantlab.engine.task import Task, to_device
from quantlab.engine.trainer import Trainer
from quantlab.quant.editing import candidates
from quantlab.quant.quantizers import symmetric_linear
from quantlab.sensitivity import hawq
from quantlab.sensitivity.hessian import hutchinson_traces, layer_weights
from quantlab.sensitivity.ilp import Problem, solve


def candidate_layers(model: torch.nn.Module, cfg: dict, groups: dict[str, str]) -> list[str]:
    """Conv2d / Linear layers not excluded by `quantize.exclude` (attention is not traced)."""
    return [n for n, m in candidates(model, cfg["quantize"]["exclude"], groups).items()
            if not isinstance(m, torch.nn.MultiheadAttention)]


def traces(trainer: Trainer, layers: list[str], batches: int, samples: int, seed: int) -> dict[str, float]:
    """Per-layer Hessian traces of the training loss, averaged over this rank's first
    `batches` training batches and then over ranks."""
    task, model = trainer.task, trainer.model
    _, sampler, loader = trainer.train_loader()
    sampler.set_epoch(0)
    model.eval()

    def loss_of(batch):
        return lambda: sum(task.loss(task.forward(model, batch), batch).values())

    weights = layer_weights(model, layers)
    closures = [loss_of(to_device(b, trainer.device)) for b in itertools.islice(loader, batches)]
    local = hutchinson_traces(weights, closures, samples, seed + trainer.world.rank)
    return dist.allreduce_mean(local, name="hawq.traces")


def allocate(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
             init: Path) -> dict:
    """Hessian traces of the float model, sensitivities per candidate bits, the ILP."""
    settings = cfg["hawq"]
    float_cfg = copy.deepcopy(cfg)
    float_cfg["quantize"]["rules"] = []
    probe = Trainer(task, float_cfg, world, logbook.child("float"), device, init=init)
    probe.sync()
    layers = candidate_layers(probe.model, cfg, task.groups)
    trace = traces(probe, layers, settings["batches"], settings["samples"], cfg["seed"])
    weights = layer_weights(probe.model, layers)
    bits = sorted(settings["bits"])
    sens = hawq.sensitivities(weights, trace, bits, lambda w, b: symmetric_linear(w, b))
    size = hawq.sizes(weights, bits)
    counted = sum(w.numel() for w in weights.values())
    total = sum(p.numel() for p in probe.model.parameters())
    probe.close()
    float_bits = 32.0 * total
    rest_bits = 32.0 * (total - counted)
    budget = float_bits / settings["min_compression"] - rest_bits
    allocation = solve(Problem(sens, size, budget, dict(settings["fixed"]), [list(g) for g in settings["tied"]]))
    compression = float_bits / (allocation.size + rest_bits)
    if world.is_main:
        counts = {b: sum(1 for v in allocation.bits.values() if v == b) for b in bits}
        print(f"HAWQ-V3 allocation over {len(layers)} layers at >= {settings['min_compression']}x: "
              + ", ".join(f"{c} x {b}-bit" for b, c in counts.items()) + f"; compression {compression:.2f}x",
              flush=True)
    return {"traces": trace, "sensitivity": sens, "bits": allocation.bits, "objective": allocation.objective,
            "compression": compression}


def run_hawq(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
             init: Path) -> dict:
    """The allocation (`hawq/allocation.json`), then QAT at its bits in the child `qat`;
    a resumed run keeps a finished allocation and continues the QAT child."""
    settings = cfg["hawq"]
    record = logbook.root / "hawq" / "allocation.json"
    result = json.loads(record.read_text()) if record.is_file() else None
    if result is None:
        result = allocate(task, cfg, world, logbook, device, init)
        logbook.write_json("hawq/allocation.json", result)
    rules = [{"modules": re.escape(layer), "algorithm": settings["algorithm"], "bits": b}
             for layer, b in result["bits"].items()]
    child = logbook.child("qat")
    metrics = fit_child(task, child_config(cfg, str(init), rules, settings["epochs"]), world, child, device, init)
    result.update(metric=metrics[task.best_metric], metrics=metrics, experiment=str(child.root))
    logbook.write_json("hawq/allocation.json", result)
    return result
