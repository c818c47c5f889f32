"""Apply a quantization recipe to a float model by module-name patterns.

A recipe is a list of rules; each names modules by a pattern name (declared by the
topology's quantize.py: the MQAT modules, e.g. `backbone`, `fpn`, `head`, and named sets
such as `first_last`) or by a regex matched in full against the qualified module name,
and gives the algorithm, bits and options. Rules apply in order (a
later rule overrides an earlier one for the layers it matches); `exclude` patterns are
never quantized. Conv2d, ConvTranspose2d, Linear and MultiheadAttention layers (both
projections) are replaced; their float weights are kept. Per-channel rules take their
scales along each layer's output-channel axis (`channel_axis`: 1 for ConvTranspose2d).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from quantlab.errors import ConfigError
from quantlab.quant.algorithms import REGISTRY, family
from quantlab.quant.layers import (QuantConv2d, QuantConvTranspose2d, QuantLinear, QuantMultiheadAttention,
                                   channel_axis)

#: the one 1-bit code, sign(W) x mean|W|, whatever the algorithm asked for (the families
#: whose bit range starts at 2)
ONE_BIT = "symmetric"


@dataclass
class Rule:
    modules: str                      # group name or regex
    algorithm: str
    bits: int
    per_channel: bool = False
    act_algorithm: str | None = None  # quantize the layer's input too
    act_bits: int = 8
    act_signed: bool = False

    @classmethod
    def from_config(cls, entry: dict, where: str) -> "Rule":
        known = set(cls.__dataclass_fields__)
        unknown = set(entry) - known
        if unknown:
            raise ConfigError(f"{where}: unknown recipe key(s) {sorted(unknown)} (known: {sorted(known)})")
        rule = cls(**entry)
        low, high = family(rule.algorithm, "weight", f"{where}: algorithm").bits
        if rule.act_algorithm is not None:
            family(rule.act_algorithm, "activation", f"{where}: act_algorithm")
        if not low <= rule.bits <= high:
            raise ConfigError(f"{where}: {rule.algorithm} takes {low}-{high} bits, got {rule.bits}")
        return rule


def algorithm_for(algorithm: str, bits: int) -> str:
    """The algorithm that quantizes at `bits`: `algorithm`, or the sign code at 1 bit."""
    return ONE_BIT if bits == 1 else algorithm


def layer_rules(bits: dict[str, int], algorithm: str) -> list[dict]:
    """A recipe of one rule per layer or module name, each matched by exactly that name
    (escaped: a module name such as `fpn` stays itself and still names its pattern)."""
    return [{"modules": re.escape(name), "algorithm": algorithm_for(algorithm, b), "bits": b}
            for name, b in bits.items()]


def pattern_of(name: str, patterns: dict[str, str | list[str]]) -> re.Pattern:
    """The regex a rule or exclusion names: a pattern name of the topology (a regex or a
    list of them) or the regex itself."""
    spec = patterns.get(name, name)
    try:
        return re.compile(spec if isinstance(spec, str) else "|".join(f"(?:{p})" for p in spec))
    except re.error as exc:
        raise ConfigError(f"recipe pattern {name!r} is not a valid regex ({exc})")


#: float layer type -> its quantized layer (the types with one weight)
QUANTIZED = {nn.Conv2d: QuantConv2d, nn.ConvTranspose2d: QuantConvTranspose2d, nn.Linear: QuantLinear}
QUANTIZABLE = (*QUANTIZED, nn.MultiheadAttention)
#: how messages name them
QUANTIZABLE_NAMES = "/".join(t.__name__ for t in QUANTIZABLE)


def quantizable(model: nn.Module) -> dict[str, nn.Module]:
    """Float layers a rule can match (exact types: an attention's out_proj goes with it)."""
    return {n: m for n, m in model.named_modules() if type(m) in QUANTIZABLE}


def weight_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """The weights a layer's quantizers act on: an attention layer's packed input
    projection and its output projection, else the one weight."""
    if isinstance(layer, nn.MultiheadAttention):
        return [layer.in_proj_weight, layer.out_proj.weight]
    return [layer.weight]


def quantizable_weights(model: nn.Module, exclude: list[str], patterns: dict) -> dict[str, list[torch.Tensor]]:
    """The weight tensors of every quantizable layer outside the `quantize.exclude`
    patterns, by layer: what a bit allocation or a module's size counts."""
    excluded = [pattern_of(p, patterns) for p in exclude]
    return {n: weight_tensors(m) for n, m in quantizable(model).items() if not any(p.fullmatch(n) for p in excluded)}


def weight_quantizer(weight: nn.Parameter, rule: Rule, axis: int = 0, loading: bool = False) -> nn.Module:
    """The rule's family's quantizer for `weight`; per channel, its scales lie along `axis`
    (the layer's `channel_axis`); `loading`: a checkpoint's state follows."""
    return REGISTRY[rule.algorithm].weight(weight, rule.bits, rule.per_channel, axis, loading)


def build_layer(layer: nn.Module, rule: Rule, loading: bool = False) -> nn.Module:
    aq = None if rule.act_algorithm is None else REGISTRY[rule.act_algorithm].activation(rule.act_bits,
                                                                                         rule.act_signed)
    if isinstance(layer, nn.MultiheadAttention):
        return QuantMultiheadAttention.from_float(
            layer, weight_quantizer(layer.in_proj_weight, rule, channel_axis(layer), loading),
            weight_quantizer(layer.out_proj.weight, rule, channel_axis(layer.out_proj), loading), aq)
    return QUANTIZED[type(layer)].from_float(layer, weight_quantizer(layer.weight, rule, channel_axis(layer), loading),
                                             aq)


def apply_recipe(model: nn.Module, rules: list[Rule], patterns: dict, exclude: list[str] = (),
                 loading: bool = False) -> list[dict]:
    """Replace the matched layers in place; return one report row per quantized layer.
    `loading`: a checkpoint's state is loaded next, so data-dependent initialisation (INQ's
    scale search) is skipped."""
    layers = quantizable(model)
    excluded = [pattern_of(p, patterns) for p in exclude]
    chosen: dict[str, Rule] = {}
    for rule in rules:
        pattern = pattern_of(rule.modules, patterns)
        hits = [n for n in layers if pattern.fullmatch(n)]
        if not hits:
            raise ConfigError(f"recipe pattern {rule.modules!r} matches no {QUANTIZABLE_NAMES} layer")
        for name in hits:
            if not any(p.fullmatch(name) for p in excluded):
                chosen[name] = rule
    report = []
    for name, rule in chosen.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, build_layer(layers[name], rule, loading))
        report.append({"layer": name, "type": type(layers[name]).__name__, "algorithm": rule.algorithm,
                       "bits": rule.bits, "per_channel": rule.per_channel, "act_algorithm": rule.act_algorithm,
                       "act_bits": rule.act_bits if rule.act_algorithm else None,
                       "act_signed": rule.act_signed if rule.act_algorithm else None})
    return report


def rules_from_report(rows: list[dict]) -> list[Rule]:
    """One exact-name rule per row of an editing report: rebuilds the same quantized layers
    (a checkpoint records its report, so its structure can be rebuilt before loading)."""
    return [Rule(re.escape(r["layer"]), r["algorithm"], r["bits"], r.get("per_channel", False),
                 r.get("act_algorithm"), r.get("act_bits") or 8, bool(r.get("act_signed")))
            for r in rows]


def rebuild(model: nn.Module, rows: list[dict]) -> list[dict]:
    """Quantize the layers of `rows` that are still float in `model`, for the checkpoint
    that recorded them to load into; return their rows."""
    todo = [r for r in rows if type(model.get_submodule(r["layer"])) in QUANTIZABLE]
    return apply_recipe(model, rules_from_report(todo), {}, loading=True) if todo else []
