"""Integer export: quantized weights as bit-packed integer codes plus scales.

The file (`torch.save`, loadable with weights_only=True) holds, for every quantized
layer, the level indices of its weight on its grid packed at the layer's bit-width, the
grid (lowest code, code step, scale(s): value = (low + step x index) x scale; INQ: scale
s / half; `axis`: the weight axis that per-channel scales lie along, 1 for ConvTranspose2d,
0 for the other layers, None for one scale), and the rest of the state (biases, norms, activation ranges, LSQ steps) as
float tensors. Loading it into the same
quantized architecture gives a fake-quant model with the exported model's outputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantlab.errors import CheckpointError
from quantlab.files import write_atomic
from quantlab.quant.layers import Grid, _Quantized
from quantlab.quant.quantizers import along

FORMAT = "quantlab-int/1"


def pack(index: torch.Tensor, bits: int) -> torch.Tensor:
    """Level indices in [0, 2^bits) as a uint8 stream of `bits` bits each (MSB first)."""
    unsigned = index.flatten().cpu().numpy().astype(np.uint8)
    planes = np.unpackbits(unsigned[:, None], axis=1)[:, 8 - bits:]
    return torch.from_numpy(np.packbits(planes.reshape(-1)))


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    planes = np.unpackbits(packed.numpy())[: count * bits].reshape(count, bits)
    full = np.concatenate([np.zeros((count, 8 - bits), np.uint8), planes], axis=1)
    return torch.from_numpy(np.packbits(full, axis=1).reshape(-1).astype(np.int64))


def encode(layer: _Quantized) -> tuple[torch.Tensor, Grid]:
    """(level indices, grid) of a quantized layer's weight: the quantizer's own output
    located on its grid, so the codes are exactly what the forward pass used."""
    weight = layer.float_weight().detach()
    grid = layer.wq.grid(weight)
    return grid.index(layer.wq(weight).detach()), grid


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
            index, grid = encode(layer)
        except ValueError as exc:
            raise CheckpointError(f"{name}: cannot export ({exc})") from None
        key = _key(name, layer.weight_name)
        layers[key] = {"codes": pack(index, layer.wq.bits), "shape": list(index.shape), "bits": layer.wq.bits,
                       "low": grid.low, "step": grid.step, "axis": grid.axis,
                       "scale": grid.scale.detach().float().cpu().reshape(-1).tolist()}
        del state[key]
        state.pop(_key(name, "wq.weight_frozen"), None)  # the codes carry it
    rest = {k: v.detach().cpu() for k, v in state.items()}
    file = {"format": FORMAT, "recipe": recipe, "layers": layers, "state": rest}
    write_atomic(path, lambda fh: torch.save(file, fh))
    return path.stat().st_size


def dequantize(entry: dict) -> torch.Tensor:
    count = int(np.prod(entry["shape"]))
    index = unpack(entry["codes"], entry["bits"], count)
    codes = (entry["low"] + entry["step"] * index).reshape(entry["shape"]).float()
    scale = torch.tensor(entry["scale"])
    if entry["axis"] is not None:
        scale = along(scale, entry["axis"], codes.dim())
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
        for extra, tensor in getattr(layer.wq, "integer_state", lambda v: {})(value).items():
            state[_key(name, f"wq.{extra}")] = tensor
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{source}: state does not match the model (missing {result.missing_keys[:4]}, "
                              f"unexpected {result.unexpected_keys[:4]})")
