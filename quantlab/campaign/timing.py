"""The short timing run behind a campaign's estimate: seconds per training image (float
and quantized) and per evaluation image of a topology at a profile, on this machine.

The task's own network, loss and collate on a batch of its training set (the campaign's
`timing` overrides make that a small synthetic set at the profile's image size). The
quantized model is every module at 4-bit LSQ weights, as a QAT stage runs them. Median of
`steps` timed steps after one warm-up step.
"""
from __future__ import annotations

import statistics
import time

import torch

from quantlab.campaign.estimate import Timing
from quantlab.engine.task import to_device
from quantlab.quant.editing import Rule, apply_recipe, layer_rules


def _median(work, steps: int, device: torch.device) -> float:
    work()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _batch(task, split: str, train: bool, size: int, device: torch.device) -> dict:
    data = task.dataset(split, train=train)
    return to_device(task.collate([data[i % len(data)] for i in range(size)]), device)


def measure(task, cfg: dict, device: torch.device, steps: int) -> Timing:
    """Time one training step of the float and the quantized network, and one evaluation
    forward, at the configured batch sizes; per image."""
    task.prepare_data()
    size = cfg["training"]["batch_size"]
    batch = _batch(task, "train", True, size, device)
    seconds = {}
    for name, rules in (("train_float", []), ("train_quant", layer_rules({g: 4 for g in task.groups}, "lsq"))):
        torch.manual_seed(cfg["seed"])
        model = task.build_network()
        apply_recipe(model, [Rule.from_config(r, "timing") for r in rules], task.patterns, cfg["quantize"]["exclude"])
        model.to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

        def step() -> None:
            loss = sum(task.loss(task.forward(model, batch), batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds[name] = _median(step, steps, device) / size
    model.eval()
    eval_size = cfg["evaluation"]["batch_size"] if "batch_size" in cfg.get("evaluation", {}) else size
    evaluation = _batch(task, cfg["engine"]["eval_split"], False, eval_size, device)
    with torch.no_grad():
        seconds["eval"] = _median(lambda: task.forward(model, evaluation), steps, device) / eval_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return Timing(seconds["train_float"], seconds["train_quant"], seconds["eval"], name)
