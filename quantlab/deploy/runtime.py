"""onnxruntime sessions of deployed models: which operators run in integers once
onnxruntime has optimised the graph, where the time goes, and latency.

The check reads the graph onnxruntime itself writes after its optimisations
(`optimized_model_filepath`): a weight operator (Conv, ConvTranspose, Gemm, MatMul, or
their fused forms) still there with a constant or dequantized weight runs in float.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort

from quantlab.deploy.graph import simplified
from quantlab.deploy.kernels import FLOAT_WEIGHT_KERNELS

def session(model: bytes | str | Path, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU session at full optimisation, with `threads` intra-op threads, sequential."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def optimized(model: bytes) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs, after every optimisation."""
    return simplified(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def float_weight_nodes(graph: onnx.GraphProto) -> list[str]:
    """The nodes of an optimised graph that run a weight operator in float: their weight
    is a constant, or constant codes through a DequantizeLinear (a product of two
    activations, such as attention's, is not a weight operator)."""
    constants = {t.name for t in graph.initializer}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants}
    return [n.name or n.op_type for n in graph.node if n.op_type in FLOAT_WEIGHT_KERNELS and len(n.input) > 1
            and (n.input[1] in constants or n.input[1] in dequantized)]


def operator_counts(graph: onnx.GraphProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in graph.node).items()))


def time_shares(model: Path, feeds: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, float]:
    """Each operator type's share of the kernel time over `runs` profiled runs."""
    with tempfile.TemporaryDirectory() as folder:
        timed = session(model, threads, profile_prefix=str(Path(folder) / "profile"))
        for _ in range(runs):
            timed.run(None, feeds)
        events = json.loads(Path(timed.end_profiling()).read_text())
    spent: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"]
    total = sum(spent.values()) or 1
    return {op: spent[op] / total for op in sorted(spent, key=spent.get, reverse=True)}


def latency(call: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    """p50 and p90 wall time of `call` in milliseconds, over `runs` after `warmup`."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return {"p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)), "runs": runs}
