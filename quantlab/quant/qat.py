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
from quantlab.quant.algorithms import REGISTRY
from quantlab.quant.editing import Rule, apply_recipe
from quantlab.quant.regularizers import FisherTrace, Objective

LossTerm = Callable[[nn.Module, Any, Any], Any]


def enabled(qcfg: dict) -> bool:
    return bool(qcfg["rules"])


def quantize_model(model: nn.Module, qcfg: dict, patterns: dict[str, str]) -> tuple[list[dict], dict]:
    """Edit `model` in place; return the per-layer report and the controllers to register."""
    rules = [Rule.from_config(entry, f"quantize.rules[{i}]") for i, entry in enumerate(qcfg["rules"])]
    report = apply_recipe(model, rules, patterns, qcfg["exclude"])
    controllers = {}
    for name in dict.fromkeys(r.algorithm for r in rules):
        algorithm = REGISTRY[name]
        if algorithm.controller is not None:
            controllers[name] = algorithm.controller(model, qcfg)
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
