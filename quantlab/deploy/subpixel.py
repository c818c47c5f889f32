"""Transposed convolutions as a convolution and a DepthToSpace, which onnxruntime's CPU
provider runs in integers (it has no QDQ rule for ConvTranspose, and no
QLinearConvTranspose kernel in its default build).

A stride-s transposed convolution computes output n = s i + r (phase r) from inputs
m = i + d with kernel tap k = r + p - s d. Each phase is an ordinary convolution over the
input, so all s x s phases are one convolution with s^2 x C_out output channels (channel
o s^2 + r_h s + r_w, DepthToSpace's CRD order) whose taps are the transposed kernel's,
rearranged, and zero where a phase has none. Exact when the output is s times the input
(kernel + output_padding - 2 padding = stride), as in ZebraPose's decoder; other
transposed convolutions are left as they are.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantlab.deploy.codes import fit_codes
from quantlab.deploy.graph import replace_nodes
from quantlab.deploy.lower import LayerCodes


def _attribute(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    found = next((a for a in node.attribute if a.name == name), None)
    return list(found.ints) if found is not None else default


def _taps(k: int, s: int, p: int) -> tuple[int, list[list[int | None]]]:
    """(first input offset d_min, for each phase r the kernel tap of each offset d or None)."""
    offsets = [d for r in range(s) for d in range(-k, k + 1) if 0 <= r + p - s * d < k]
    low, high = min(offsets), max(offsets)
    return low, [[(r + p - s * d) if 0 <= r + p - s * d < k else None for d in range(low, high + 1)]
                 for r in range(s)]


def rearranged(weight: np.ndarray, strides: list[int], pads: list[int]) -> tuple[np.ndarray, list[int]]:
    """A transposed kernel [C_in, C_out, kH, kW] as the phase convolution's kernel
    [C_out s_h s_w, C_in, L_h, L_w], and that convolution's pads."""
    c_in, c_out, kh, kw = weight.shape
    (sh, sw), (ph, pw) = strides, pads[:2]
    low_h, taps_h = _taps(kh, sh, ph)
    low_w, taps_w = _taps(kw, sw, pw)
    out = np.zeros((c_out, sh, sw, c_in, len(taps_h[0]), len(taps_w[0])), weight.dtype)
    for rh in range(sh):
        for jh, th in enumerate(taps_h[rh]):
            for rw in range(sw):
                for jw, tw in enumerate(taps_w[rw]):
                    if th is not None and tw is not None:
                        out[:, rh, rw, :, jh, jw] = weight[:, :, th, tw].T
    high_h, high_w = low_h + len(taps_h[0]) - 1, low_w + len(taps_w[0]) - 1
    return out.reshape(c_out * sh * sw, c_in, len(taps_h[0]), len(taps_w[0])), [-low_h, -low_w, high_h, high_w]


def _convertible(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    strides = _attribute(node, "strides", [1, 1])
    pads = _attribute(node, "pads", [0, 0, 0, 0])
    extra = _attribute(node, "output_padding", [0, 0])
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if weight.ndim != 4 or group != 1 or _attribute(node, "dilations", [1, 1]) != [1, 1]:
        return False
    if pads[:2] != pads[2:] or any(k + o - 2 * p != s for k, o, p, s in zip(weight.shape[2:], extra, pads, strides)):
        return False
    low_h, low_w = (_taps(k, s, p)[0] for k, s, p in zip(weight.shape[2:], strides, pads))
    return strides[0] == strides[1] and low_h <= 0 and low_w <= 0


def rewrite(model: onnx.ModelProto, layers: list[LayerCodes]) -> tuple[onnx.ModelProto, list[LayerCodes]]:
    """`model` with every convertible ConvTranspose (constant weight) as Conv + DepthToSpace,
    and `layers` with the codes of those layers rearranged the same way."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    layers = list(layers)
    nodes = []
    for node in graph.node:
        weight = numpy_helper.to_array(weights[node.input[1]]) if (
            node.op_type == "ConvTranspose" and node.input[1] in weights) else None
        if weight is None or not _convertible(node, weight):
            nodes.append(node)
            continue
        strides, pads = _attribute(node, "strides", [1, 1]), _attribute(node, "pads", [0, 0, 0, 0])
        kernel, conv_pads = rearranged(weight, strides, pads)
        name = node.input[1] + "__subpixel"
        graph.initializer.append(numpy_helper.from_array(kernel, name))
        inputs = [node.input[0], name]
        if len(node.input) > 2 and node.input[2]:
            bias = np.repeat(numpy_helper.to_array(weights[node.input[2]]), strides[0] * strides[1])
            graph.initializer.append(numpy_helper.from_array(bias, node.input[2] + "__subpixel"))
            inputs.append(node.input[2] + "__subpixel")
        phases = node.output[0] + "__phases"
        nodes.append(helper.make_node("Conv", inputs, [phases], name=node.name + "__subpixel",
                                      kernel_shape=list(kernel.shape[2:]), pads=conv_pads))
        nodes.append(helper.make_node("DepthToSpace", [phases], list(node.output), name=node.name + "__d2s",
                                      blocksize=strides[0], mode="CRD"))
        for i, layer in enumerate(layers):
            if layer.codes.shape == weight.shape and fit_codes(weight, layer.codes, 1) is not None:
                codes, _ = rearranged(layer.codes, strides, pads)
                layers[i] = LayerCodes(layer.name, codes, 0, layer.input_grid)
    replace_nodes(graph, nodes)
    return model, layers
