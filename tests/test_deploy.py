"""Deployment (quantlab.deploy): integer codes found in folded weights, uint8 parameters,
transposed convolutions as phase convolutions, every weight operator running in
onnxruntime's integer kernels, the deployed model's outputs and memory."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from quantlab.deploy import codes as C, graph, lower, qdq, runtime, subpixel
from quantlab.deploy.memory import measure
from quantlab.deploy.pipeline import deploy
from quantlab.errors import CheckpointError
from quantlab.quant.calibration import calibrate
from quantlab.quant.algorithms.inq import INQController
from quantlab.quant.editing import Rule, apply_recipe
from quantlab.quant.layers import Grid


def test_codes_are_found_in_a_weight_that_folding_scaled_per_channel():
    codes = np.array([[[[1, -2], [0, 3]]], [[[-1, 1], [2, 0]]]], np.int8)  # 2 channels
    factors = np.array([0.5, -0.25], np.float32)  # BatchNorm gamma / sigma < 0 on channel 1
    weight = codes * factors[:, None, None, None]
    found, scales = C.fit_codes(weight, codes, 0)
    assert scales.tolist() == [0.5, 0.25]
    assert found.tolist() == [[[[1, -2], [0, 3]]], [[[1, -1], [-2, 0]]]]  # channel 1's signs flipped
    assert np.array_equal(found * scales[:, None, None, None], weight)
    moved = weight.copy()
    moved[0, 0, 0, 0] += 0.1  # off the grid: not these codes
    assert C.fit_codes(moved, codes, 0) is None


def test_uint8_parameters_of_ranges_and_learned_grids():
    found = qdq.range_params(-1.0, 3.0)  # 4 / 255 a step; 0 lands on code 64 (63.75 rounded)
    assert found.scale == pytest.approx(4 / 255) and found.zero == 64
    assert qdq.range_params(0.5, 2.0) == qdq.Params(2 / 255, 0)  # zero always representable
    signed = qdq.grid_params(Grid(torch.tensor([0.1]), -128, 127, None))  # LSQ signed 8-bit
    unsigned = qdq.grid_params(Grid(torch.tensor([0.2]), 0, 255, None))
    assert signed == qdq.Params(pytest.approx(0.1), 128) and unsigned == qdq.Params(pytest.approx(0.2), 0)


@pytest.mark.parametrize("kernel,stride,padding,extra", [(3, 2, 1, 1), (4, 2, 1, 0), (2, 2, 0, 0), (6, 3, 2, 1)])
def test_a_transposed_convolution_equals_its_phase_convolution(kernel, stride, padding, extra):
    torch.manual_seed(kernel)
    layer = nn.ConvTranspose2d(5, 6, kernel, stride, padding, extra).eval()
    x = torch.randn(2, 5, 7, 9)
    model, _ = subpixel.rewrite(graph.float_onnx(layer, (x,), ["x"]), [])
    assert [n.op_type for n in model.graph.node] == ["Conv", "DepthToSpace"]
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = layer(x)
    assert out[0].shape == tuple(expected.shape)
    assert np.abs(out[0] - expected.numpy()).max() <= 1e-5 * expected.abs().max().item()


class Net(nn.Module):
    """The operators of our networks: conv + BN + LeakyReLU, a residual sum, nearest
    upsampling, a transposed convolution, GroupNorm + ReLU, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.1))
        self.unit = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.1))
        self.down = nn.Conv2d(8, 8, 3, 2, 1)
        self.up = nn.ConvTranspose2d(8, 8, 3, 2, 1, 1, bias=False)
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        x = x + self.unit(x)
        x = x + nn.functional.interpolate(self.down(x), scale_factor=2.0, mode="nearest") + self.up(self.down(x))
        y = self.head(x)
        return y, self.fc(y.mean((2, 3)))


def quantized(seed: int = 0, recipe: list[Rule] | None = None) -> tuple[Net, torch.Tensor]:
    torch.manual_seed(seed)
    net = Net()
    for bn in (net.stem[1], net.unit[1]):  # a trained BatchNorm: scales of both signs
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(-1.5, 1.5)
    net.eval()
    apply_recipe(net, recipe or [Rule(r".*", "lsq", 4, per_channel=True, act_algorithm="lsq", act_bits=8,
                                      act_signed=True)], {})
    x = torch.randn(4, 3, 32, 32)
    calibrate(net, [x], lambda m, b: m(b))
    return net.eval(), x


def test_every_weight_operator_runs_in_integers_and_the_check_sees_one_that_does_not():
    net, x = quantized()
    found = deploy(net, {"x": x[:1]}, [{"x": x.numpy()}], "minmax")
    assert found.float_weight_nodes == []
    # stem, unit, down (its two calls on one input merged), head x 2, the transposed one as phases
    assert found.operators["QLinearConv"] == 6
    assert found.operators.get("Conv", 0) == 0 and found.operators.get("ConvTranspose", 0) == 0
    assert any(op in found.operators for op in ("QGemm", "QLinearMatMul"))
    assert found.layers == 7 and len(found.plan.layer_codes) == 7 and found.plan.post_training == []
    # the naive placement: no QuantizeLinear on a convolution's output keeps it in float
    broken = onnx.ModelProto.FromString(found.int8.SerializeToString())
    conv = next(n for n in broken.graph.node if n.op_type == "Conv")
    quantize = next(n for n in broken.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0])
    dequantize = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0])
    conv.output[0] = dequantize.output[0]
    broken.graph.node.remove(quantize)
    broken.graph.node.remove(dequantize)
    left = runtime.float_weight_nodes(runtime.optimized(broken.SerializeToString()).graph)
    assert left == [conv.name]


def test_weights_are_the_layers_codes_and_learned_grids_set_the_activations():
    net, x = quantized()
    plain, layers = lower.lowered(net)
    found = deploy(net, {"x": x[:1]}, [{"x": x.numpy()}], "minmax")
    constants = {t.name: numpy_helper.to_array(t) for t in found.int8.graph.initializer}
    dequantized = [n for n in found.int8.graph.node if n.op_type == "DequantizeLinear" and
                   constants.get(n.input[0]) is not None and constants[n.input[0]].dtype == np.int8]
    by_name = {layer.name: layer for layer in layers}
    # the stem's codes: its quantizer's own, signs flipped where BatchNorm's scale is negative
    stem = by_name["stem.0"].codes
    sign = np.sign(net.stem[1].weight.detach().numpy())
    assert any(np.array_equal(constants[n.input[0]], stem * sign[:, None, None, None].astype(np.int8))
               for n in dequantized)
    assert found.plan.learned > 0
    learned = {np.float32(layer.input_grid.scale.item()) for layer in layers}
    scales = {np.float32(constants[n.input[1]]) for n in found.int8.graph.node if n.op_type == "QuantizeLinear"}
    assert learned <= scales


def test_the_deployed_model_computes_what_the_fake_quant_model_computes(tmp_path):
    net, x = quantized()
    found = deploy(net, {"x": x[:1]}, [{"x": x.numpy()}], "minmax")
    found.write(tmp_path)
    outputs = runtime.session(tmp_path / "model_int8.onnx", 1).run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = net(x)
        finer = quantized(0, [Rule(r".*", "symmetric", 8, per_channel=True)])[0](x)  # 8-bit weights, for scale
    for got, want, other in zip(outputs, expected, finer):
        gap = np.abs(got - want.numpy()).max()
        # the deployed graph adds 8-bit rounding of each layer's output: far less than
        # what 4-bit weights change against 8-bit ones
        assert gap <= 0.1 * np.abs(want.numpy()).max()
        assert gap < np.abs(other.numpy() - want.numpy()).max()


def test_a_partly_frozen_inq_layer_is_refused_naming_it():
    torch.manual_seed(0)
    net = Net().eval()
    apply_recipe(net, [Rule(r"unit\.0", "inq", 3)], {})
    INQController(net, {0: 0.5}).on_epoch_start(0)
    with pytest.raises(CheckpointError, match=r"layer unit\.0: INQ layer is 50% frozen"):
        lower.lowered(net)


def test_peak_memory_of_a_session_counts_its_weights(tmp_path):
    layer = nn.Linear(2048, 2048)  # 16 MiB of float32 weights
    model = graph.float_onnx(layer, (torch.randn(1, 2048),), ["x"])
    onnx.save(model, tmp_path / "big.onnx")
    found = measure(tmp_path / "big.onnx", 1, {"x": ([1, 2048], "float32")})
    assert found["session_mib"] >= 16 and found["peak_mib"] > found["baseline_mib"]
