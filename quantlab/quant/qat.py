"""Turn a float network into its QAT version from the `quantize` config section.

    quantize:
      init: null            # float checkpoint to start from: an experiment id or a file
      rules: []             # recipe entries: {modules, algorithm, bits, per_channel,
                            #                  act_algorithm, act_bits, act_signed}
      calibration_batches   # batches per rank that fix activation ranges before training
      exclude: []           # patterns never quantized (e.g. first / last layers)
      inq_schedule: {}      # {epoch: fraction frozen} for INQ layers
      fisher_regularizer    # lambda of the Fisher-trace term (0 = none)

What it returns is registered with the trainer: the controllers (epoch schedules with
state) and the loss terms (quantlab.quant.regularizers).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from quantlab.errors import ConfigError
from quantlab.quant.controllers import INQController
from quantlab.quant.editing import Rule, apply_recipe
from quantlab.quant.regularizers import FisherTrace, Objective

LossTerm = Callable[[nn.Module, Any, Any], Any]


def enabled(qcfg: dict) -> bool:
    return bool(qcfg["rules"])


def inq_schedule(schedule: dict) -> dict[int, float]:
    """`quantize.inq_schedule` as {epoch: fraction}: epochs >= 0, fractions in (0, 1]
    that never fall (INQ never unfreezes)."""
    try:
        steps = {int(e): float(f) for e, f in schedule.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"config key 'quantize.inq_schedule': expected {{epoch: fraction}}, got {schedule!r}") from None
    ordered = [steps[e] for e in sorted(steps)]
    if not steps or min(steps) < 0 or any(not 0 < f <= 1 for f in ordered) or ordered != sorted(ordered):
        raise ConfigError(f"config key 'quantize.inq_schedule': {schedule!r} must map epochs >= 0 to fractions "
                          "in (0, 1] that never fall, e.g. {0: 0.5, 2: 1.0}")
    return steps


def inq_finishes(schedule: dict, epochs: int, epochs_key: str) -> None:
    """An INQ schedule that freezes every weight within `epochs` (what `epochs_key` sets):
    INQ layers are integer only once fully frozen, so a schedule that ends later (or below
    100%) would leave a model that cannot be exported, which export would only say after
    the training."""
    steps = inq_schedule(schedule)
    reached = max((f for e, f in steps.items() if e < epochs), default=0.0)
    if reached < 1.0:
        last = max(steps)
        raise ConfigError(f"config key 'quantize.inq_schedule': within the {epochs} epoch(s) of {epochs_key} it freezes "
                          f"{reached:.0%} of the INQ weights (its last step, epoch {last}, freezes {steps[last]:.0%}); "
                          "INQ must reach 100% before the last epoch: shorten the schedule or train longer")


def quantize_model(model: nn.Module, qcfg: dict, patterns: dict[str, str]) -> tuple[list[dict], dict]:
    """Edit `model` in place; return the per-layer report and the controllers to register."""
    rules = [Rule.from_config(entry, f"quantize.rules[{i}]") for i, entry in enumerate(qcfg["rules"])]
    report = apply_recipe(model, rules, patterns, qcfg["exclude"])
    controllers = {}
    if any(r.algorithm == "inq" for r in rules):
        controllers["inq"] = INQController(model, inq_schedule(qcfg["inq_schedule"]))
    return report, controllers


def loss_terms(qcfg: dict, critical: Objective | None) -> dict[str, LossTerm]:
    """The loss terms the section enables: `fisher` (lambda x Tr(F) of `critical`, the
    task's critical-category loss) when `fisher_regularizer` > 0."""
    weight = qcfg["fisher_regularizer"]
    if weight <= 0:
        return {}
    if critical is None:
        raise ConfigError("config key 'quantize.fisher_regularizer': the Fisher-trace term needs the task's "
                          "critical-category loss, and this task has none")
    return {"fisher": FisherTrace(weight, critical)}
