"""From a (fake-quant or float) torch model to its fp32 and int8 ONNX: the steps of
`lower`, `graph`, `subpixel`, `calibrate` and `qdq` in order, and what onnxruntime made of
the result. The fp32 graph keeps its transposed convolutions (onnxruntime's own fp32
kernel for them is the fair baseline); the int8 one has them as phase convolutions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
import torch
from torch import nn

from quantlab.deploy import calibrate, graph, lower, qdq, runtime, subpixel
from quantlab.files import write_atomic

FP32, INT8 = "model_fp32.onnx", "model_int8.onnx"


@dataclass
class Deployment:
    """The lowered torch model, its inputs, and its two ONNX graphs with the plan of the
    integer one and the operators onnxruntime runs it with."""
    plain: nn.Module
    names: list[str]
    example: tuple[torch.Tensor, ...]
    spec: Any
    fp32: onnx.ModelProto
    int8: onnx.ModelProto
    plan: qdq.Plan
    layers: int
    operators: dict[str, int]
    float_weight_nodes: list[str]

    def write(self, folder: Path) -> dict[str, int]:
        """Both graphs in `folder`, atomically; their sizes in bytes."""
        sizes = {}
        for name, proto in ((FP32, self.fp32), (INT8, self.int8)):
            write_atomic(folder / name, lambda fh, p=proto: fh.write(p.SerializeToString()))
            sizes[name] = (folder / name).stat().st_size
        return sizes


def deploy(model: nn.Module, inputs: dict[str, torch.Tensor], batches: Iterable[dict[str, np.ndarray]],
           calibration: str) -> Deployment:
    """`model` on `inputs` (an example, by input name) as fp32 and int8 ONNX, activation
    ranges from `batches` where QAT learned none."""
    plain, layers = lower.lowered(model.eval())
    names, example = list(inputs), tuple(inputs.values())
    fp32 = graph.float_onnx(plain, example, names)
    integer_ready, layers = subpixel.rewrite(fp32, layers)
    ranges = calibrate.tensor_ranges(integer_ready, batches, calibration)
    int8, plan = qdq.integer_graph(integer_ready, layers, ranges)
    ran = runtime.optimized(int8.SerializeToString())
    return Deployment(plain, names, example, graph.output_spec(plain, example), fp32, int8, plan, len(layers),
                      runtime.operator_counts(ran.graph), runtime.float_weight_nodes(ran.graph))
