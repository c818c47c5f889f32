"""Turn a float network into its QAT version from the `quantize` config section.

    quantize:
      init: null            # float checkpoint to start from: an experiment id or a file
      rules: []             # recipe entries: {modules, algorithm, bits, per_channel,
                            #                  act_algorithm, act_bits, act_signed}
      calibration_batches   # batches per rank that fix activation ranges before training
      exclude: []           # patterns never quantized (e.g. first / last layers)
      inq_schedule: {}      # {epoch: fraction frozen} for INQ layers
"""
from __future__ import annotations

from torch import nn

from quantlab.engine.errors import ConfigError
from quantlab.quant.controllers import INQController
from quantlab.quant.editing import Rule, apply_recipe


def enabled(qcfg: dict) -> bool:
    return bool(qcfg["rules"])


def quantize_model(model: nn.Module, qcfg: dict, groups: dict[str, str]) -> tuple[list[dict], dict]:
    """Edit `model` in place; return the per-layer report and the controllers to register."""
    rules = [Rule.from_config(entry, f"quantize.rules[{i}]") for i, entry in enumerate(qcfg["rules"])]
    report = apply_recipe(model, rules, groups, qcfg["exclude"])
    controllers = {}
    if any(r.algorithm == "inq" for r in rules):
        if not qcfg["inq_schedule"]:
            raise ConfigError("quantize.inq_schedule: INQ layers need a {epoch: fraction} schedule")
        controllers["inq"] = INQController(model, qcfg["inq_schedule"])
    return report, controllers
