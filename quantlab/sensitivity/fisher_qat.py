"""Fisher-aware mixed-precision QAT (papers.md B), `--mode fisher`.

Each scheme picks bits per layer at one average-bit target: `uniform` gives every layer
the target, `fisher_overall` / `fisher_critical` solve the PTQ ILP (same ranges, same
quantization error) with the Fisher trace of the overall / the critical objective as
sensitivity. Each allocation is then trained by QAT from the float checkpoint once for
every Fisher-trace regularizer weight lambda (0 = no regularizer). Results, traces and
allocations are ledgers under `fisher/`, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from quantlab.engine import distributed as dist
from quantlab.engine.children import evaluate_child, fit_child
from quantlab.engine.config import child_config
from quantlab.engine.errors import ConfigError
from quantlab.engine.logbook import Logbook
from quantlab.engine.task import Task
from quantlab.mqat.ledger import Ledger
from quantlab.mqat.tables import save_tables
from quantlab.sensitivity.ptq import allocate, average_precision, float_traces
from quantlab.sensitivity.tables import detr_fisher

SCHEMES = ("uniform", "fisher_overall", "fisher_critical")


def run_key(scheme: str, weight: float) -> str:
    return f"{scheme}@{weight:g}"


def check(settings: dict, ranges: dict) -> None:
    """What the schema cannot say about one key alone: the target needs a bit range."""
    if settings["target"] not in ranges:
        raise ConfigError(f"config key 'fisher.target': {settings['target']} has no bit range in ptq.ranges "
                          f"(ranges for {sorted(ranges)})")


def allocations(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device, init: Path,
                ledger: Ledger) -> None:
    """Bits per layer of every scheme at the target, and the float model's metrics."""
    settings = cfg["fisher"]
    if all(s in ledger for s in settings["schemes"]) and "float" in ledger:
        return
    traces = Ledger(logbook.root / "fisher" / "traces.json", writer=world.is_main)
    probe, tensors, counts = float_traces(task, cfg, world, logbook, device, init, settings["schemes"], traces)
    for scheme in settings["schemes"]:
        if scheme not in ledger:
            bits = allocate(scheme, settings["target"], tensors, counts, traces.entries, cfg["ptq"])
            ledger.record(scheme, {"bits": bits, "average_bits": average_precision(bits, counts)})
    probe.close()
    if "float" not in ledger:
        metrics = evaluate_child(task, cfg, world, logbook.child("fisher/float"), device, init, [], "float")
        ledger.record("float", {"bits": {}, "average_bits": 32.0, "metrics": metrics})


def run_fisher(task: Task, cfg: dict, world: dist.World, logbook: Logbook, device: torch.device,
               init: Path) -> dict:
    """Every scheme x regularizer weight: QAT at the scheme's bits in the child
    `fisher/<scheme>_lambda<weight>`; results in `fisher/results.json`, then the table."""
    settings = cfg["fisher"]
    check(settings, cfg["ptq"]["ranges"])
    if task.critical_metric is None:
        raise ConfigError(f"--mode fisher: {type(task).__name__} has no critical-category metric")
    plans = Ledger(logbook.root / "fisher" / "allocations.json", writer=world.is_main)
    allocations(task, cfg, world, logbook, device, init, plans)
    results = Ledger(logbook.root / "fisher" / "results.json", writer=world.is_main)
    for scheme in settings["schemes"]:
        plan = plans.entries[scheme]
        rules = [{"modules": re.escape(layer), "algorithm": settings["algorithm"], "bits": b}
                 for layer, b in plan["bits"].items()]
        twin = next((s for s in settings["schemes"][:settings["schemes"].index(scheme)]
                     if plans.entries[s]["bits"] == plan["bits"]), None)
        for weight in settings["regularizers"]:
            key = run_key(scheme, weight)
            if key in results:
                continue
            if twin is not None:  # the same bits train to the same model: reuse that run
                results.record(key, dict(results.entries[run_key(twin, weight)], scheme=scheme, same_as=twin))
                continue
            child_cfg = child_config(cfg, str(init), rules, settings["epochs"])
            child_cfg["quantize"]["fisher_regularizer"] = float(weight)
            child = logbook.child(f"fisher/{scheme}_lambda{weight:g}")
            metrics = fit_child(task, child_cfg, world, child, device, init)
            results.record(key, {"scheme": scheme, "regularizer": weight, "average_bits": plan["average_bits"],
                                 "metrics": metrics})
        if world.is_main:
            for weight in settings["regularizers"]:
                entry = results.entries[run_key(scheme, weight)]
                print(f"QAT {scheme:<16} lambda {weight:<6g} (average {plan['average_bits']:.2f} bits"
                      + (f", the bits of {twin}" if twin else "") + f"): {task.best_metric} "
                      f"{entry['metrics'][task.best_metric]:.2f}, {task.critical_metric} "
                      f"{entry['metrics'][task.critical_metric]:.2f}", flush=True)
    table = detr_fisher(logbook.root, task.best_metric, task.critical_metric, settings["schemes"])
    markdown = save_tables(logbook.root, [table], world.is_main)
    if world.is_main:
        print(f"\n{markdown}\n\ntables written to {logbook.root / 'tables'}", flush=True)
    return results.entries
