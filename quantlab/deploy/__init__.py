"""Deployment: a quantized model as integer ONNX that onnxruntime's CPU provider runs with
integer kernels (QLinearConv, QLinearMatMul, ...), its activation ranges, and what it costs
to run (latency, peak memory, file sizes).

The steps, one module each: `lower` (the fake-quant model as a float model on its weight
grids, and the codes of every quantized layer), `graph` (float ONNX, BatchNorm folded),
`calibrate` (activation ranges), `qdq` (the integer graph), `runtime` (sessions, which
operators run in integers, latency), `memory` (peak resident memory of a session).
"""
