"""Checkpoints of the MQAT reference code, read unchanged.

Layout: {"fold": {...}, "network": state_dict, "training": {...}}. The network's keys sit
under a wrapper prefix (e.g. `model.`; keys outside it, such as a second registration of
the backbone, are copies and are dropped). An INQ-quantized layer keeps `weight` (float),
`weight_frozen` (NaN where not frozen) and `weight_s` (level scale s); here those become
the layer's `weight`, `wq.weight_frozen` and `wq.weight_s`. The bit-width is not stored:
it is the smallest b whose grid linspace(-s, s, 2^b - 1) holds every frozen value.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from quantlab.errors import CheckpointError
from quantlab.quant.algorithms.inq import INQWeight
from quantlab.quant.editing import Rule, apply_recipe
from quantlab.quant.layers import _Quantized

INQ_KEYS = ("weight_frozen", "weight_s")


def is_reference(state: dict) -> bool:
    return isinstance(state.get("network"), dict) and "fold" in state


def on_grid(frozen: torch.Tensor, s: torch.Tensor, bits: int) -> bool:
    """Whether every frozen value (NaN: not frozen) is a level of linspace(-s, s, 2^b - 1).
    Such grids nest only when one half-count divides the other (3 levels lie on 15, not
    15 on 31), so holding a file's values is checked per bit-width, never assumed."""
    half = 2 ** (bits - 1) - 1
    scaled = frozen[~torch.isnan(frozen)].double() / float(s) * half
    return torch.allclose(scaled, torch.round(scaled), atol=1e-4) and bool((scaled.abs() <= half + 1e-4).all())


def inq_bits(frozen: torch.Tensor, s: torch.Tensor, name: str) -> int:
    """The smallest bit-width whose INQ levels contain all frozen values of a layer."""
    for bits in range(2, 9):
        if on_grid(frozen, s, bits):
            return bits
    raise CheckpointError(f"{name}: weight_frozen values lie on no INQ grid of 2-8 bits")


def convert(state: dict, prefix: str, source: str) -> tuple[dict, dict[str, int], list[str]]:
    """Our state_dict from a reference file: (state, {INQ layer: bits}, dropped keys)."""
    network = state["network"]
    ours, dropped = {}, []
    for key, value in network.items():
        if not key.startswith(prefix):
            dropped.append(key)
            continue
        key = key[len(prefix):]
        layer, _, leaf = key.rpartition(".")
        ours[f"{layer}.wq.{leaf}" if leaf in INQ_KEYS else key] = value
    if not ours:
        raise CheckpointError(f"{source}: no network key starts with {prefix!r}")
    layers = {}
    for key in [k for k in ours if k.endswith(".wq.weight_frozen")]:
        layer = key[: -len(".wq.weight_frozen")]
        if f"{layer}.wq.weight_s" not in ours:
            raise CheckpointError(f"{source}: {prefix}{layer} has weight_frozen but no weight_s")
        layers[layer] = inq_bits(ours[key], ours[f"{layer}.wq.weight_s"], f"{source}: {prefix}{layer}")
    return ours, layers, dropped


def quantize_like(model: nn.Module, layers: dict[str, int], state: dict, source: str) -> list[dict]:
    """Make the INQ layers of a reference file (`layers`, from `convert` with its `state`)
    INQ layers of `model`; returns the editing report of the new ones. A layer the config's
    recipe quantized already must be INQ on a grid that holds every frozen value of the
    file (another bit-width whose grid does not would move the weights at export). The new
    layers' INQ scales are not searched: the file holds them."""
    todo = []
    for name, bits in sorted(layers.items()):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{source}: INQ layer {name} is not in the network") from None
        if not isinstance(module, _Quantized):
            todo.append(Rule(re.escape(name), "inq", bits))
            continue
        frozen, scale = state[f"{name}.wq.weight_frozen"], state[f"{name}.wq.weight_s"]
        if not isinstance(module.wq, INQWeight) or not on_grid(frozen, scale, module.wq.bits):
            made = f"{type(module.wq).__name__} {module.wq.bits}-bit"
            why = "" if not isinstance(module.wq, INQWeight) else \
                f", whose {2 ** module.wq.bits - 1} levels do not hold the file's {2 ** bits - 1}"
            raise CheckpointError(f"{source}: {name} holds {bits}-bit INQ weights ({2 ** bits - 1} levels), the "
                                  f"recipe makes it {made}{why}")
    return apply_recipe(model, todo, {}, loading=True) if todo else []
