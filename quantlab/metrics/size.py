"""Model size at the assigned bit-widths and the compression ratio against float32.

Size = sum over parameters of (#elements x bits): a quantized layer's weight (`weight`,
or `in_proj_weight` for attention) at its weight bits, every other parameter (biases, norms, LSQ steps) at FLOAT_BITS (32). Buffers
(running statistics, INQ bookkeeping) are not counted: they are not weights.
"""
from __future__ import annotations

from torch import nn

from quantlab.quant.layers import FLOAT_BITS


def weight_bits(module: nn.Module) -> int | None:
    """Bits of a quantized layer's weight quantizer, None for a float layer."""
    wq = getattr(module, "wq", None)
    return getattr(wq, "bits", None)


def size_report(model: nn.Module) -> dict:
    """Per-module rows and totals in bytes; `compression` = float32 size / quantized size.

    Quantizer parameters (LSQ steps) are rows of their own (`<layer>.wq`, `<layer>.aq`)."""
    rows, seen = [], set()
    total_bits = float_bits = 0
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        bits_w = weight_bits(module)
        layer_bits = layer_float = 0
        for pname, p in own:
            if id(p) in seen:
                continue
            seen.add(id(p))
            quantized = bits_w is not None and pname == getattr(module, "weight_name", "weight")
            bits = bits_w if quantized else FLOAT_BITS
            layer_bits += p.numel() * bits
            layer_float += p.numel() * FLOAT_BITS
        rows.append({"layer": name, "bits": bits_w or FLOAT_BITS, "bytes": layer_bits / 8,
                     "float_bytes": layer_float / 8})
        total_bits += layer_bits
        float_bits += layer_float
    return {"layers": rows, "bytes": total_bits / 8, "float_bytes": float_bits / 8,
            "compression": float_bits / total_bits if total_bits else 1.0}
