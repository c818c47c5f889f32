"""The quantizer families, one module each, found here by name (quantlib's one folder per
algorithm; detectron2's name -> builder registry).

A family's module holds its quantizers, its controller and its schedule checks, and
registers an `Algorithm` saying what it quantizes (weights, activations or both) and at
which weight bits. The recipe editor builds layers from it, the config schema takes its
choices from it (`quantizers: weight`), and the trainer registers its controller. Adding
a quantizer is adding a module here; nothing else changes (docs/quantization.md shows
one).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from quantlab.errors import ConfigError
from quantlab.quant.controllers import Controller

#: (float weight, bits, per_channel, channel axis, loading) -> the weight quantizer;
#: `loading`: a checkpoint's state follows, so data-dependent initialisation may be skipped
WeightBuilder = Callable[[torch.Tensor, int, bool, int, bool], nn.Module]
#: (bits, signed) -> the input activation quantizer
ActivationBuilder = Callable[[int, bool], nn.Module]


@dataclass(frozen=True)
class Algorithm:
    name: str
    #: one line for the docs and error messages
    summary: str
    #: the weight quantizer's builder, or None (an activation-only family)
    weight: WeightBuilder | None = None
    #: the activation quantizer's builder, or None (a weight-only family)
    activation: ActivationBuilder | None = None
    #: the weight bits it takes, inclusive
    bits: tuple[int, int] = (2, 8)
    #: (model, `quantize` section) -> the epoch controller of its layers (quantlab.quant.controllers)
    controller: Callable[[nn.Module, dict], Controller] | None = None
    #: (`quantize` section, whether a rule uses the family) -> None: checks its own
    #: settings; raises ConfigError
    check_settings: Callable[[dict, bool], None] | None = None
    #: (`quantize` section, epochs, the key that sets them) -> None: a training of that
    #: many epochs finishes its schedule; raises ConfigError
    check_epochs: Callable[[dict, int, str], None] | None = None


REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Add a family (its module calls this once, at import)."""
    if algorithm.name in REGISTRY and REGISTRY[algorithm.name] is not algorithm:
        raise ValueError(f"quantizer family {algorithm.name!r} is registered twice")
    REGISTRY[algorithm.name] = algorithm
    return algorithm


def names(kind: str) -> tuple[str, ...]:
    """The registered families that quantize `kind` (weight or activation), sorted."""
    return tuple(sorted(n for n, a in REGISTRY.items() if getattr(a, kind) is not None))


def family(name: str, kind: str, where: str) -> Algorithm:
    """The family `name` for `kind`, or a one-line error naming `where` (e.g.
    `quantize.rules[0]: algorithm`) and the choices."""
    found = REGISTRY.get(name)
    if found is None or getattr(found, kind) is None:
        raise ConfigError(f"{where} {name!r} is not one of {list(names(kind))}")
    return found


def check_epochs(name: str, qcfg: dict, epochs: int, key: str) -> None:
    """A training of `epochs` with family `name` finishes that family's schedule."""
    algorithm = REGISTRY[name]
    if algorithm.check_epochs is not None:
        algorithm.check_epochs(qcfg, epochs, key)


def _discover() -> None:
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()
