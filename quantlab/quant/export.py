"""Integer export: quantized weights as bit-packed integer codes plus scales.

The file (`torch.save`, loadable with weights_only=True) holds, for every quantized
layer, its weight's codes packed at the layer's bit-width, the scale(s) that turn codes
into values (INQ: s / half, so value = level index x s / half), and the rest of the state
(biases, norms, activation ranges, LSQ steps) as float tensors. Loading it into the same
quantized architecture gives a fake-quant model with the exported model's outputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantlab.engine.checkpoint import save_atomic
from quantlab.engine.errors import CheckpointError
from quantlab.quant.layers import INQWeight, SymmetricWeight, _Quantized

FORMAT = "quantlab-int/1"


def pack(codes: torch.Tensor, bits: int, low: int) -> torch.Tensor:
    """Codes in [low, low + 2^bits) as a uint8 stream of `bits` bits each (MSB first)."""
    unsigned = (codes.flatten().cpu().numpy().astype(np.int64) - low).astype(np.uint8)
    if bits == 1:
        unsigned = unsigned // 2  # sign code: -1 / +1 -> 0 / 1
    planes = np.unpackbits(unsigned[:, None], axis=1)[:, 8 - bits:]
    return torch.from_numpy(np.packbits(planes.reshape(-1)))


def unpack(packed: torch.Tensor, bits: int, low: int, count: int) -> torch.Tensor:
    planes = np.unpackbits(packed.numpy())[: count * bits].reshape(count, bits)
    full = np.concatenate([np.zeros((count, 8 - bits), np.uint8), planes], axis=1)
    return torch.from_numpy(np.packbits(full, axis=1).reshape(-1).astype(np.int64) + low)


def encode(layer: _Quantized) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(integer codes, scale, lowest code, bits) of a quantized layer's weight."""
    weight = layer.float_weight().detach()
    wq = layer.wq
    if isinstance(wq, SymmetricWeight) and wq.bits == 1:
        alpha = weight.abs().mean() if not wq.per_channel else \
            weight.abs().reshape(weight.shape[0], -1).mean(dim=1)
        return torch.where(weight >= 0, 1, -1).to(torch.int32), alpha, -1, 1
    grid = wq.grid(weight)
    source = wq(weight).detach() if isinstance(wq, INQWeight) else weight  # INQ: the frozen levels
    return grid.codes(source), grid.scale, grid.low, wq.bits


def _key(name: str, leaf: str) -> str:
    return f"{name}.{leaf}" if name else leaf


def quantized_layers(model: nn.Module) -> dict[str, _Quantized]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _Quantized)}


def export_integer(model: nn.Module, path: Path, recipe: list[dict]) -> int:
    """Write the integer file; return its size in bytes. `recipe` is the per-layer report
    of the editing step, stored so a reader can rebuild the quantized architecture."""
    state = model.state_dict()
    layers = {}
    for name, layer in quantized_layers(model).items():
        try:
            codes, scale, low, bits = encode(layer)
        except ValueError as exc:
            raise CheckpointError(f"{name}: cannot export ({exc})") from None
        key = _key(name, layer.weight_name)
        layers[key] = {"codes": pack(codes, bits, low), "shape": list(codes.shape), "bits": bits,
                       "low": low, "scale": scale.detach().float().cpu().reshape(-1)}
        del state[key]
        state.pop(_key(name, "wq.weight_frozen"), None)  # the codes carry it
    rest = {k: v.detach().cpu() for k, v in state.items()}
    save_atomic({"format": FORMAT, "recipe": recipe, "layers": layers, "state": rest}, path)
    return path.stat().st_size


def dequantize(entry: dict) -> torch.Tensor:
    count = int(np.prod(entry["shape"]))
    codes = unpack(entry["codes"], entry["bits"], entry["low"], count)
    if entry["bits"] == 1:
        codes = codes * 2 + 1  # the sign code stores -1 / +1 as 0 / 1
    codes = codes.reshape(entry["shape"]).float()
    scale = entry["scale"]
    if scale.numel() > 1:
        scale = scale.reshape(-1, *[1] * (codes.dim() - 1))
    return codes * scale


@torch.no_grad()
def load_integer(model: nn.Module, file: dict, source: str) -> None:
    """Fill the quantized `model` (same recipe as the exported one) from an integer file."""
    layers = quantized_layers(model)
    expected = {_key(n, m.weight_name): (n, m) for n, m in layers.items()}
    if set(expected) != set(file["layers"]):
        missing = sorted(set(expected) - set(file["layers"]))
        extra = sorted(set(file["layers"]) - set(expected))
        raise CheckpointError(f"{source}: quantized layers differ from the model's "
                              f"(missing {missing[:4]}, unexpected {extra[:4]})")
    state = dict(file["state"])
    for key, (name, layer) in expected.items():
        entry = file["layers"][key]
        if entry["bits"] != layer.wq.bits or list(layer.float_weight().shape) != entry["shape"]:
            raise CheckpointError(f"{source}: {key} is {entry['bits']}-bit {entry['shape']} in the file, "
                                  f"{layer.wq.bits}-bit {list(layer.float_weight().shape)} in the model")
        value = dequantize(entry).to(layer.float_weight().dtype)
        state[key] = value
        if isinstance(layer.wq, INQWeight):
            state[_key(name, "wq.weight_frozen")] = value
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{source}: state does not match the model (missing {result.missing_keys[:4]}, "
                              f"unexpected {result.unexpected_keys[:4]})")
