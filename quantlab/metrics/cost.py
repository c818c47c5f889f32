"""Compute cost: multiply-accumulates and BOPs (MACs x weight bits x activation bits).

The cost is traced: one forward pass of an example batch with hooks on every Conv2d,
ConvTranspose2d, Linear and MultiheadAttention, so the MACs follow the real feature-map
sizes. A Conv2d costs output elements x (Cin / groups) x kH x kW, a Linear output elements
x in_features; a ConvTranspose2d costs input elements (N Cin Hin Win) x (Cout / groups) x
kH x kW: every input value multiplies a kH x kW patch for each output channel of its group
(products that padding later crops off count too). A layer's weight bits come from its
weight quantizer and its activation bits from its input quantizer (the bits it is set
to, calibrated or not); float weights or inputs count as 32 bits. In attention only the
projections count (the q.k and attention.v products are activation x activation, left at
32 x 32 bits and reported apart as `attention_macs`).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from quantlab.quant.layers import FLOAT_BITS

#: the layers whose MACs are traced
COSTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.MultiheadAttention)


def _bits(module: nn.Module) -> tuple[int, int]:
    wq, aq = getattr(module, "wq", None), getattr(module, "aq", None)
    weight = getattr(wq, "bits", FLOAT_BITS)
    act = FLOAT_BITS if aq is None else aq.bits
    return weight, act


def _attention_macs(module: nn.MultiheadAttention, inputs: tuple) -> tuple[int, int, int]:
    """(input projection MACs, output projection MACs, attention product MACs)."""
    query, key = inputs[0], inputs[1]
    seq_dim = 1 if module.batch_first else 0
    tokens_q = query.numel() // query.shape[-1]
    tokens_k = key.numel() // key.shape[-1]
    length_k = key.shape[seq_dim]
    e = module.embed_dim
    in_proj = (tokens_q + 2 * tokens_k) * e * e
    return in_proj, tokens_q * e * e, 2 * tokens_q * length_k * e


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """MACs of one call of a Conv2d, ConvTranspose2d or Linear (the formulas above)."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    kernel = module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.ConvTranspose2d):
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


def cost_report(model: nn.Module, run: Callable[[nn.Module], Any]) -> dict:
    """Per-layer MACs and BOPs of `run(model)` (one forward of an example batch), traced on
    a copy so calibration statistics and BatchNorm buffers of `model` stay untouched."""
    probe = copy.deepcopy(model).eval()
    rows: list[dict] = []
    attention_macs = 0
    handles = []
    out_projs = {id(m.out_proj) for m in probe.modules() if isinstance(m, nn.MultiheadAttention)}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: Any) -> None:
            nonlocal attention_macs
            w_bits, a_bits = _bits(module)
            if isinstance(module, nn.MultiheadAttention):
                in_proj, out_proj, products = _attention_macs(module, inputs)
                attention_macs += products
                out_bits = getattr(getattr(module.out_proj, "wq", None), "bits", FLOAT_BITS)
                rows.append({"layer": name, "macs": in_proj, "weight_bits": w_bits, "act_bits": a_bits})
                rows.append({"layer": f"{name}.out_proj", "macs": out_proj, "weight_bits": out_bits,
                             "act_bits": FLOAT_BITS})
                return
            rows.append({"layer": name, "macs": _layer_macs(module, inputs, output), "weight_bits": w_bits,
                         "act_bits": a_bits})
        return record

    for name, module in probe.named_modules():
        if isinstance(module, COSTED) and id(module) not in out_projs:
            handles.append(module.register_forward_hook(hook(name)))
    with torch.no_grad():
        run(probe)
    for handle in handles:
        handle.remove()
    for row in rows:
        row["bops"] = row["macs"] * row["weight_bits"] * row["act_bits"]
    macs = sum(r["macs"] for r in rows)
    bops = sum(r["bops"] for r in rows) + attention_macs * FLOAT_BITS * FLOAT_BITS
    float_bops = (macs + attention_macs) * FLOAT_BITS * FLOAT_BITS
    return {"layers": rows, "macs": macs, "attention_macs": attention_macs, "bops": bops,
            "float_bops": float_bops, "bops_reduction": float_bops / bops if bops else 1.0}
