"""How onnxruntime's CPU kernels compute: on integers, converting, moving values, or in
float. Apart from the runtime so that reading a table needs no onnx (a second to import)."""
from __future__ import annotations

#: onnxruntime CPU kernels that compute on integers
INTEGER_KERNELS = frozenset({
    "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearLeakyRelu", "QLinearSigmoid", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearConvTranspose", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearSoftmax"})
#: kernels that move between the integer and float domains
CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
#: kernels that only move, copy or select values: they run on whatever type they are given
MOVEMENT = frozenset({"Transpose", "DepthToSpace", "SpaceToDepth", "Reshape", "Resize", "Shape", "Slice", "Concat",
                      "Gather", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand", "MaxPool", "Split",
                      "ReorderInput", "ReorderOutput", "NhwcMaxPool"})
#: float kernels with a weight: in a deployed model these should not remain
FLOAT_WEIGHT_KERNELS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm",
                                  "FusedMatMul", "NchwcConv"})


def kind(op_type: str) -> str:
    """integer, conversion, movement or float: how an onnxruntime kernel computes. Float
    kernels are the float islands."""
    if op_type in INTEGER_KERNELS:
        return "integer"
    if op_type in CONVERSIONS:
        return "conversion"
    return "movement" if op_type in MOVEMENT else "float"
