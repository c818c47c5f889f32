"""What a campaign costs, before it runs: device-hours per child run, part and table,
from the time per image a short timing run measured on the target system.

A child run costs (epochs x training images + extra training passes) x the time of one
training image on one device (quantized or float), plus its evaluations x evaluation
images x the time of one evaluation image. Data-parallel ranks divide the wall time, not
the device-hours, so the figure holds for any number of GPUs (scaling losses aside).
"""
from __future__ import annotations

from dataclasses import dataclass

from quantlab.campaign.spec import Campaign
from quantlab.modes import MODES, Child


@dataclass(frozen=True)
class Timing:
    """Seconds per image on one device of the target system, and that device."""
    train_float: float
    train_quant: float
    eval: float
    device: str


def experiment_children(mode: str, cfg: dict, task: object) -> list[Child]:
    """The child runs of a search (the mode's plan, once per seed of `seeds` for a search that repeats its child
    trainings per seed, as modes.execute runs it), or the experiment as one run."""
    plan = MODES[mode].plan
    if plan is not None:
        children = plan(cfg, task)
        if not (cfg["seeds"] and MODES[mode].children):
            return children
        return [c._replace(name=f"seed{seed}/{c.name}") for seed in cfg["seeds"] for c in children]
    epochs = cfg["training"]["epochs"] if MODES[mode].trains else 0
    evals = max(1, -(-epochs // max(1, cfg["engine"]["eval_every"]))) if epochs else 1
    return [Child("", mode, epochs, quantized=bool(cfg["quantize"]["rules"]), evals=evals)]


def child_hours(child: Child, timing: Timing, images: dict[str, int]) -> float:
    per_image = timing.train_quant if child.quantized else timing.train_float
    seconds = (child.epochs * images["train"] + child.images) * per_image + child.evals * images["eval"] * timing.eval
    return seconds / 3600


def experiment_hours(children: list[Child], timing: Timing, images: dict[str, int],
                     parts: list[str] | None = None) -> float:
    """Device-hours of the children (of `parts` only, when given)."""
    return sum(child_hours(c, timing, images) for c in children if parts is None or c.part in parts)


def table_hours(campaign: Campaign, children: dict[str, list[Child]], timings: dict[str, Timing]) -> dict[str, float]:
    """Per paper table: its parts of its experiment, and every experiment that one needs
    (the float model counts in each table that builds on it)."""
    out = {}
    for table in campaign.tables:
        needed, todo = set(), list(campaign.experiments[table.experiment].needs())
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo += campaign.experiments[name].needs()
        hours = experiment_hours(children[table.experiment], timings[table.experiment], campaign.images,
                                 table.parts or None)
        hours += sum(experiment_hours(children[n], timings[n], campaign.images) for n in needed)
        out[table.name] = hours
    return out
