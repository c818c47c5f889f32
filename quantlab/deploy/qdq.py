"""The integer graph: QuantizeLinear / DequantizeLinear pairs placed so that onnxruntime's
CPU provider fuses every weight operator into its integer kernel.

onnxruntime turns `DQ(x), DQ(w), DQ(b) -> Conv -> Q` into QLinearConv only when every
input of the Conv comes from a DequantizeLinear (a float bias keeps it float: the bias is
int32 with scale s_x x s_w, zero point 0) and its output goes to one QuantizeLinear. The
same holds for ConvTranspose, Gemm and MatMul, and, on activations, for Add, LeakyRelu,
Relu, Resize and the pools between two such pairs. So:

- weights are int8 codes with one scale per output channel: a quantized layer's own codes
  (its grid's scales times whatever BatchNorm folding multiplied them by; a negative
  factor flips the codes' signs), every other weight max-abs symmetric at 8 bits;
- every activation tensor that enters or leaves a weight operator, or joins two integer
  operators, has one pair, uint8: the grid QAT learned for it where a quantized layer
  reads it (signed grids with zero point 128, so codes map one to one), else the range
  the calibration measured (asymmetric, zero included);
- Resize and the pools keep their input's parameters, so onnxruntime runs them on uint8.
Operators without an integer kernel (normalisations, Mul, Softmax, shape arithmetic) stay
float between pairs: the float islands the report lists.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantlab.deploy.codes import fit_codes, max_abs_codes
from quantlab.deploy.graph import replace_nodes
from quantlab.deploy.lower import LayerCodes
from quantlab.quant.layers import Grid

#: operators with a weight: integer when the weight is a constant
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: operators onnxruntime runs on quantized inputs and outputs
PASS_OPS = ("Add", "LeakyRelu", "Relu", "Resize", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat",
            "Sigmoid", "DepthToSpace")
#: operators whose output keeps the input's quantization parameters (they move values, or
#: pick the largest): onnxruntime then runs them on uint8 without requantizing
KEEP_PARAMS = ("Resize", "MaxPool", "DepthToSpace")


@dataclass(frozen=True)
class Params:
    """uint8 quantization parameters of one tensor: value = (q - zero) x scale."""
    scale: float
    zero: int


@dataclass
class Plan:
    """What the integer graph holds: weight operators by source of their codes, the
    activation tensors by source of their parameters, and what could not follow QAT."""
    layer_codes: list[str] = field(default_factory=list)
    post_training: list[str] = field(default_factory=list)
    learned: int = 0
    calibrated: int = 0
    notes: list[str] = field(default_factory=list)


def grid_params(grid: Grid) -> Params:
    """The uint8 parameters holding a learned activation grid (signed: zero point 128)."""
    return Params(float(grid.scale.reshape(-1)[0]), 0 if grid.low >= 0 else 128)


def range_params(low: float, high: float) -> Params:
    """Asymmetric uint8 parameters of a calibrated range (zero always representable)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / 255 if high > low else 1.0
    return Params(scale, int(np.clip(round(-low / scale), 0, 255)))


def _output_axis(node: onnx.NodeProto) -> int:
    """The axis of the node's weight that holds its output channels."""
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 1 if node.op_type in ("ConvTranspose", "MatMul") else 0


class _Builder:
    """Collects the new initializers and nodes, with unique names."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}__q{self.count}"

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def dequantize(self, codes: str, scale: np.ndarray, zero: np.ndarray, axis: int | None, out: str) -> None:
        inputs = [codes, self.constant(codes + "_scale", scale), self.constant(codes + "_zero", zero)]
        extra = {} if axis is None else {"axis": axis}
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [out], name=self.name("dq"), **extra))

    def pair(self, source: str, out: str, params: Params) -> None:
        scale = self.constant(source + "_scale", np.array(params.scale, np.float32))
        zero = self.constant(source + "_zero", np.array(params.zero, np.uint8))
        quantized = self.name(source + "_quantized")
        self.nodes.append(helper.make_node("QuantizeLinear", [source, scale, zero], [quantized], name=self.name("q")))
        self.nodes.append(helper.make_node("DequantizeLinear", [quantized, scale, zero], [out], name=self.name("dq")))


def _activations(graph: onnx.GraphProto, weighted: list[onnx.NodeProto]) -> list[str]:
    """The activation tensors that get a pair: the data input and the output of every
    weight operator, then the outputs of the pass-through operators whose activation
    inputs all have one, in graph order (ONNX's node order is topological, so one pass
    sees every input's mark before its readers)."""
    constants = {t.name for t in graph.initializer}
    marked = {t for n in weighted for t in (n.input[0], n.output[0])}
    for node in graph.node:
        inputs = [t for t in node.input if t and t not in constants]
        if node.op_type in PASS_OPS and inputs and all(t in marked for t in inputs):
            marked.add(node.output[0])
    ordered = [i.name for i in graph.input] + [t for n in graph.node for t in n.output]
    return [t for t in ordered if t in marked]


def integer_graph(model: onnx.ModelProto, layers: list[LayerCodes],
                  ranges: dict[str, tuple[float, float]]) -> tuple[onnx.ModelProto, Plan]:
    """`model` (float, as `graph.float_onnx` writes it) with integer weights and uint8
    activations: `layers` give the codes and learned input grids of the quantized layers,
    `ranges` (min, max) the calibrated range of every other activation."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph, plan, build = model.graph, Plan(), _Builder(model.graph)
    weights = {t.name: t for t in graph.initializer}
    weighted = [n for n in graph.node if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in weights]
    by_shape: dict[tuple, list[LayerCodes]] = defaultdict(list)
    for layer in layers:
        by_shape[layer.codes.shape].append(layer)
        if layer.codes.ndim == 2:
            by_shape[layer.codes.T.shape].append(layer)

    def codes_of(node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, LayerCodes | None]:
        weight = numpy_helper.to_array(weights[node.input[1]])
        axis = _output_axis(node)
        for layer in by_shape.get(weight.shape, []):
            own = layer.codes.T if node.op_type == "MatMul" else layer.codes
            if own.shape == weight.shape:
                fitted = fit_codes(weight, own, axis)
                if fitted is not None:
                    return (*fitted, layer)
        return (*max_abs_codes(weight, axis), None)

    fitted = {n.name: codes_of(n) for n in weighted}
    learned: dict[str, list[Grid]] = defaultdict(list)
    for node in weighted:
        layer = fitted[node.name][2]
        if layer is not None and layer.input_grid is not None:
            learned[node.input[0]].append(layer.input_grid)
    params: dict[str, Params] = {}
    producers = {t: n for n in graph.node for t in n.output}
    for tensor in _activations(graph, weighted):
        source = producers.get(tensor)
        if source is not None and source.op_type in KEEP_PARAMS and source.input[0] in params:
            params[tensor] = params[source.input[0]]
        elif learned.get(tensor):
            grids = learned[tensor]
            params[tensor] = grid_params(grids[0])
            plan.learned += 1
            if any(g.levels < 255 for g in grids):
                plan.notes.append(f"{tensor}: its learned grid has fewer than 8 bits; it runs on the 8-bit grid of "
                                  "the same step (a wider clip)")
            if len({grid_params(g) for g in grids}) > 1:
                plan.notes.append(f"{tensor}: its readers learned different grids; the first one's is used")
        elif tensor in ranges:
            params[tensor] = range_params(*ranges[tensor])
            plan.calibrated += 1
        else:
            raise ValueError(f"tensor {tensor}: no calibrated range (calibration did not reach it)")
    data = {node.name: params[node.input[0]] for node in weighted}
    _place_pairs(graph, params, build)
    for node in weighted:
        codes, scale, layer = fitted[node.name]
        (plan.layer_codes if layer is not None else plan.post_training).append(node.name)
        _integer_weights(node, codes, scale, data[node.name], weights, build)
    graph.initializer.extend(build.initializers)
    replace_nodes(graph, _sorted(build.nodes + list(graph.node)))
    return model, plan


def _place_pairs(graph: onnx.GraphProto, params: dict[str, Params], build: _Builder) -> None:
    """One Q/DQ pair per tensor of `params`: a produced tensor keeps its name for its
    readers (its producer writes `<name>__float`); a graph input's readers are rewired."""
    inputs = {i.name for i in graph.input}
    for node in graph.node:
        for i, tensor in enumerate(node.output):
            if tensor in params:
                node.output[i] = tensor + "__float"
                build.pair(tensor + "__float", tensor, params[tensor])
    for tensor in inputs & set(params):
        build.pair(tensor, tensor + "__dq", params[tensor])
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = tensor + "__dq"


def _integer_weights(node: onnx.NodeProto, codes: np.ndarray, scale: np.ndarray, data: Params,
                     weights: dict[str, onnx.TensorProto], build: _Builder) -> None:
    """The node's weight as int8 codes through a DequantizeLinear, its bias as int32 at
    scale s_x x s_w."""
    axis = _output_axis(node)
    name = build.constant(node.input[1] + "_codes", codes)
    node.input[1] = build.name(node.input[1] + "_dq")
    build.dequantize(name, scale, np.zeros(scale.shape, np.int8), axis, node.input[1])
    if len(node.input) > 2 and node.input[2] in weights:
        bias = numpy_helper.to_array(weights[node.input[2]]).astype(np.float64)
        bias_scale = (data.scale * scale.astype(np.float64)).astype(np.float32)
        codes32 = np.round(bias / bias_scale).astype(np.int32)
        name = build.constant(node.input[2] + "_codes", codes32)
        node.input[2] = build.name(node.input[2] + "_dq")
        build.dequantize(name, bias_scale, np.zeros(scale.shape, np.int32), 0, node.input[2])


def _sorted(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """`nodes` in an order where every input is produced before it is read (Kahn's
    algorithm, ties in the given order)."""
    producer = {t: i for i, n in enumerate(nodes) for t in n.output}
    waiting = [sum(1 for t in set(n.input) if t in producer) for n in nodes]
    readers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for tensor in set(node.input):
            readers[tensor].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    ordered = []
    while ready:
        i = ready.pop(0)
        ordered.append(nodes[i])
        for tensor in nodes[i].output:
            for j in readers.get(tensor, []):
                waiting[j] -= 1
                if waiting[j] == 0:
                    ready.append(j)
    if len(ordered) != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if waiting[i] > 0)
        raise ValueError(f"integer graph: node {stuck.name} reads a tensor nothing produces")
    return ordered
