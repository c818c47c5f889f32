"""The lowered model as float ONNX, simplified the way onnxruntime simplifies it.

The TorchScript exporter folds BatchNorm into the convolution before it; onnxruntime's
basic level (standard ONNX operators only) then folds constants and the Mul / Add of a
frozen BatchNorm (DETR's) into the convolution too. What remains is the float graph the
integer one is built from, and the fp32 model the latency table measures.
"""
from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.utils import _pytree

#: the ONNX opset of deployed models (17: the highest onnxruntime's QDQ fusions all cover)
OPSET = 17


def output_spec(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """The tree of the model's outputs (tuples, lists), to give a session's flat outputs
    the shape of the model's."""
    with torch.no_grad():
        return _pytree.tree_flatten(model(*inputs))[1]


def float_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str]) -> onnx.ModelProto:
    """`model` traced on `inputs` as ONNX (any batch size; the other sizes fixed), with
    onnxruntime's basic graph simplification."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=OPSET, input_names=names,
                          do_constant_folding=True, dynamic_axes={name: {0: "batch"} for name in names})
    return simplified(buffer.getvalue(), ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)


def simplified(model: bytes, level: ort.GraphOptimizationLevel) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs after its optimisations at `level`."""
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """`graph` with `nodes` as its nodes, and without the initializers none of them reads."""
    del graph.node[:]
    graph.node.extend(nodes)
    read = {t for n in nodes for t in n.input}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
