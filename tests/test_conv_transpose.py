"""ConvTranspose2d quantization: per-channel scales along axis 1 of its [in, out/groups, kH,
kW] weight, checked against hand computations; editing, MACs, size, integer and ONNX export."""
from itertools import product

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from quantlab.engine.checkpoint import load
from quantlab.errors import ConfigError
from quantlab.metrics.cost import cost_report
from quantlab.metrics.size import size_report
from quantlab.quant.algorithms.inq import INQController, INQWeight
from quantlab.quant.algorithms.lsq import LSQWeight
from quantlab.quant.algorithms.symmetric import SymmetricWeight
from quantlab.quant.editing import Rule, apply_recipe, quantizable, rebuild
from quantlab.quant.export import dequantize, export_integer, load_integer
from quantlab.quant.layers import QuantConv2d, QuantConvTranspose2d, channel_axis

STRIDE, PADDING, OUTPUT_PADDING = 2, 1, 1


def float_layer(seed: int = 0, **kwargs) -> nn.ConvTranspose2d:
    torch.manual_seed(seed)
    options = dict(stride=STRIDE, padding=PADDING, output_padding=OUTPUT_PADDING)
    return nn.ConvTranspose2d(3, 5, 3, **{**options, **kwargs})


def by_hand_symmetric(w: torch.Tensor, levels: int, per_channel: bool) -> torch.Tensor:
    """round(W / scale) scale with scale = max|W| / levels, over W[:, o] for each output
    channel o (per channel) or over all of W."""
    out = torch.empty_like(w)
    if not per_channel:
        scale = w.abs().max() / levels
        return torch.round(w / scale) * scale
    for o in range(w.shape[1]):
        scale = w[:, o].abs().max() / levels
        out[:, o] = torch.round(w[:, o] / scale) * scale
    return out


def test_the_output_channel_axis_of_a_transposed_convolution_is_1():
    assert channel_axis(nn.ConvTranspose2d(3, 5, 3)) == 1
    assert channel_axis(nn.Conv2d(3, 5, 3)) == 0 and channel_axis(nn.Linear(3, 5)) == 0
    assert nn.ConvTranspose2d(3, 5, 3).weight.shape == (3, 5, 3, 3)  # [in, out, kH, kW]


@pytest.mark.parametrize("per_channel", [True, False])
def test_symmetric_4_bit_weights_and_output_equal_a_hand_computation(per_channel):
    conv = float_layer()
    q = QuantConvTranspose2d.from_float(conv, SymmetricWeight(4, per_channel, axis=1))
    w = conv.weight.detach()
    expected = by_hand_symmetric(w, 7, per_channel)
    quantized = q.wq(q.weight).detach()
    torch.testing.assert_close(quantized, expected, rtol=0, atol=1e-7)
    # at most 15 levels per output channel, and every channel's largest |w| lands on +-7 scale
    for o in range(5):
        assert len(torch.unique(quantized[:, o])) <= 15
    if per_channel:  # axis 0 (input channels) would be a different quantization
        assert not torch.allclose(quantized, SymmetricWeight(4, True, axis=0)(w), rtol=0, atol=1e-6)
    x = torch.randn(2, 3, 4, 4)
    out = q(x)
    assert out.shape == (2, 5, 8, 8)  # (4 - 1) 2 - 2 + 3 + 1
    reference = F.conv_transpose2d(x, expected, conv.bias, stride=STRIDE, padding=PADDING,
                                   output_padding=OUTPUT_PADDING)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


def test_from_float_keeps_the_geometry_and_output_size_picks_the_output_padding():
    torch.manual_seed(1)
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=2, output_padding=1, groups=2, bias=False, dilation=2)
    q = QuantConvTranspose2d.from_float(conv, SymmetricWeight(8, per_channel=True, axis=1))
    for attribute in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding",
                      "groups", "dilation", "padding_mode"):
        assert getattr(q, attribute) == getattr(conv, attribute), attribute
    assert q.bias is None and torch.equal(q.weight, conv.weight)
    twin = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=2, output_padding=1, groups=2, bias=False, dilation=2)
    with torch.no_grad():
        twin.weight.copy_(q.wq(q.weight))
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(q(x), twin(x))
    for size in ([9, 9], [10, 10], [1, 4, 10, 9]):  # the two sizes stride 2 allows, and N, C in front
        out = q(x, output_size=size)
        assert out.shape[-2:] == tuple(size[-2:])
        torch.testing.assert_close(out, twin(x, output_size=size))


def test_lsq_per_channel_step_starts_at_2_mean_abs_over_sqrt_qp_along_axis_1():
    conv = float_layer()
    wq = LSQWeight(conv.weight, 4, per_channel=True, axis=1)
    assert wq.step.shape == (1, 5, 1, 1)
    w = conv.weight.detach()
    expected = torch.stack([2 * w[:, o].abs().mean() / 7 ** 0.5 for o in range(5)])  # Q_P = 7 at 4 bits
    torch.testing.assert_close(wq.step.detach().reshape(-1), expected)
    assert wq.grid(w).axis == 1
    q = QuantConvTranspose2d.from_float(conv, wq)
    q(torch.randn(2, 3, 4, 4)).square().sum().backward()
    assert q.wq.step.grad.shape == (1, 5, 1, 1) and bool((q.wq.step.grad != 0).all())
    assert q.weight.grad is not None and float(q.weight.grad.abs().sum()) > 0
    # the forward is round(clip(W / s_o)) s_o, channel by channel
    s = wq.step.detach()
    torch.testing.assert_close(q.wq(q.weight).detach(), torch.clamp(torch.round(w / s), -8, 7) * s)


def test_the_sign_code_per_channel_scales_by_mean_abs_of_each_output_channel():
    w = float_layer().weight.detach()
    wq = SymmetricWeight(1, per_channel=True, axis=1)
    alpha = torch.stack([w[:, o].abs().mean() for o in range(5)]).reshape(1, 5, 1, 1)
    expected = torch.where(w >= 0, 1.0, -1.0) * alpha
    torch.testing.assert_close(wq(w), expected, rtol=1e-6, atol=1e-7)
    grid = wq.grid(w)
    assert grid.axis == 1 and (grid.low, grid.high, grid.step) == (-1, 1, 2)
    torch.testing.assert_close(grid.scale, alpha)


class Decoder(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=groups)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up(torch.relu(self.enc(x)))))


def test_apply_recipe_quantizes_a_transposed_convolution_by_name_and_rebuild_restores_it():
    torch.manual_seed(0)
    model = Decoder()
    assert set(quantizable(model)) == {"enc", "up", "head"}
    report = apply_recipe(model, [Rule("up", "lsq", 4, per_channel=True, act_algorithm="ste")], {})
    assert [(r["layer"], r["type"]) for r in report] == [("up", "ConvTranspose2d")]
    assert type(model.up) is QuantConvTranspose2d and type(model.enc) is nn.Conv2d
    assert isinstance(model.up.wq, LSQWeight) and model.up.wq.step.shape == (1, 6, 1, 1)
    x = torch.randn(2, 3, 8, 8)
    model(x)  # calibrates the input range
    model.up.aq.end_calibration(model.up.aq.calibration_statistic())

    torch.manual_seed(1)
    fresh = Decoder()
    rows = rebuild(fresh, report)
    assert rows == report and type(fresh.up) is QuantConvTranspose2d and fresh.up.wq.axis == 1
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))
    # symmetric per channel on the same model picks axis 1 for `up` and 0 for the Conv2d layers
    apply_recipe(fresh, [Rule("up|enc", "symmetric", 4, per_channel=True)], {})
    assert fresh.up.wq.grid(fresh.up.weight).scale.shape == (1, 6, 1, 1)
    assert type(fresh.enc) is QuantConv2d and fresh.enc.wq.grid(fresh.enc.weight).scale.shape == (4, 1, 1, 1)


def test_a_rule_matching_nothing_names_convtranspose2d_among_the_layer_types():
    with pytest.raises(ConfigError, match="matches no Conv2d/ConvTranspose2d/Linear/MultiheadAttention layer"):
        apply_recipe(Decoder(), [Rule("decoder", "lsq", 4)], {})


def test_inq_quantizes_a_transposed_convolution_per_tensor():
    torch.manual_seed(0)
    model = Decoder()
    apply_recipe(model, [Rule("up", "inq", 3)], {})
    assert isinstance(model.up.wq, INQWeight)
    INQController(model, {0: 1.0}).on_epoch_start(0)
    levels = model.up.wq(model.up.weight).detach() / (model.up.wq.weight_s / 3)
    torch.testing.assert_close(levels, torch.round(levels), rtol=0, atol=1e-4)  # 7 levels: -3 s/3 .. 3 s/3
    assert model.up.wq.grid(model.up.weight).axis is None
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 2, 8, 8)


def conv_transpose_loop(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, output_padding: int,
                        groups: int) -> tuple[torch.Tensor, int]:
    """A transposed convolution as its definition: every input value scatters x times the
    kernel of each output channel of its group; padding crops the full result. Returns the
    output and the multiply-adds it did."""
    n_batch, c_in, height, width = x.shape
    per_group_in, per_group_out, kh, kw = c_in // groups, w.shape[1], w.shape[2], w.shape[3]
    full = torch.zeros(n_batch, per_group_out * groups, (height - 1) * stride + kh + output_padding,
                       (width - 1) * stride + kw + output_padding, dtype=torch.float64)
    macs = 0
    for n, ci, i, j in product(range(n_batch), range(c_in), range(height), range(width)):
        group = ci // per_group_in
        for o, a, b in product(range(per_group_out), range(kh), range(kw)):
            full[n, group * per_group_out + o, i * stride + a, j * stride + b] += float(x[n, ci, i, j] * w[ci, o, a, b])
            macs += 1
    out_h = (height - 1) * stride - 2 * padding + kh + output_padding
    out_w = (width - 1) * stride - 2 * padding + kw + output_padding
    return full[:, :, padding:padding + out_h, padding:padding + out_w], macs


@pytest.mark.parametrize("groups", [1, 2])
def test_macs_of_a_transposed_convolution_equal_a_loop_count(groups):
    torch.manual_seed(0)
    model = Decoder(groups).eval()
    x = torch.randn(1, 3, 6, 6)
    feature = torch.relu(model.enc(x)).detach()  # 1 x 4 x 3 x 3
    out, loop_macs = conv_transpose_loop(feature.double(), model.up.weight.detach().double(), 2, 1, 1, groups)
    torch.testing.assert_close(out.float(), F.conv_transpose2d(feature, model.up.weight, None, 2, 1, 1, groups),
                               rtol=1e-5, atol=1e-5)
    # by hand: Cin Hin Win (Cout / groups) k^2 = 4 x 3 x 3 x (6 / groups) x 9
    assert loop_macs == 4 * 3 * 3 * (6 // groups) * 9 == {1: 1944, 2: 972}[groups]
    report = cost_report(model, lambda m: m(x))
    macs = {r["layer"]: r["macs"] for r in report["layers"]}
    assert macs == {"enc": 4 * 3 * 3 * 3 * 9, "up": loop_macs, "head": 6 * 6 * 2 * 6}
    apply_recipe(model, [Rule("up", "symmetric", 4, per_channel=True)], {})
    row = next(r for r in cost_report(model, lambda m: m(x))["layers"] if r["layer"] == "up")
    assert (row["macs"], row["weight_bits"], row["act_bits"], row["bops"]) == (loop_macs, 4, 32, loop_macs * 4 * 32)


def test_a_4_bit_transposed_convolution_weight_counts_4_bits_an_element():
    model = nn.Sequential(float_layer())
    apply_recipe(model, [Rule("0", "symmetric", 4, per_channel=True)], {})
    row = next(r for r in size_report(model)["layers"] if r["layer"] == "0")
    assert row["bits"] == 4
    assert row["bytes"] == (3 * 5 * 3 * 3 * 4 + 5 * 32) / 8 and row["float_bytes"] == (3 * 5 * 9 + 5) * 4


class Upsampler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2)
        self.up3 = nn.ConvTranspose2d(4, 5, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up3(torch.relu(self.up2(torch.relu(self.up(torch.relu(self.enc(x)))))))


EXACT = [Rule("enc", "symmetric", 4, per_channel=True), Rule("up", "symmetric", 4, per_channel=True),
         Rule("up2", "lsq", 3, per_channel=True), Rule("up3", "inq", 3)]


def upsampler(seed: int, rules: list[Rule]) -> Upsampler:
    torch.manual_seed(seed)
    model = Upsampler().eval()
    apply_recipe(model, rules, {})
    INQController(model, {0: 1.0}).on_epoch_start(0)
    return model


def test_integer_export_of_per_channel_axis_1_weights_round_trips_exactly(tmp_path):
    model = upsampler(0, EXACT)
    path = tmp_path / "model_int.pt"
    export_integer(model, path, [])
    file = load(path)
    axes = {k: (e["axis"], len(e["scale"])) for k, e in file["layers"].items()}
    assert axes == {"enc.weight": (0, 4), "up.weight": (1, 6), "up2.weight": (1, 2), "up3.weight": (None, 1)}
    for key, entry in file["layers"].items():
        layer = model.get_submodule(key.rsplit(".", 1)[0])
        assert torch.equal(dequantize(entry), layer.wq(layer.weight).detach()), key
    fresh = upsampler(1, EXACT)  # other random weights
    load_integer(fresh, file, str(path))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for name in ("enc", "up", "up2", "up3"):
            a, b = model.get_submodule(name), fresh.get_submodule(name)
            assert torch.equal(a.wq(a.weight), b.wq(b.weight)), name
        assert torch.equal(fresh(x), model(x))


def test_integer_export_of_the_per_channel_sign_code_on_axis_1(tmp_path):
    """mean|W| is recomputed from the loaded weights: equal to rounding, not bit for bit."""
    model = upsampler(0, [Rule("up", "symmetric", 1, per_channel=True)])
    export_integer(model, tmp_path / "sign.pt", [])
    entry = load(tmp_path / "sign.pt")["layers"]["up.weight"]
    assert entry["axis"] == 1 and len(entry["scale"]) == 6 and entry["bits"] == 1
    torch.testing.assert_close(dequantize(entry), model.up.wq(model.up.weight).detach(), rtol=1e-6, atol=1e-7)
    fresh = upsampler(1, [Rule("up", "symmetric", 1, per_channel=True)])
    load_integer(fresh, load(tmp_path / "sign.pt"), "sign.pt")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-6)


def test_onnx_export_has_a_per_channel_axis_1_qdq_pair_and_onnxruntime_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from quantlab.quant.qdq import export_onnx
    model = upsampler(0, EXACT[:3] + [Rule("up3", "lsq", 4, per_channel=True, act_algorithm="lsq",
                                           act_signed=False)])
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model(x)  # calibrates up3's input step
    model.up3.aq.end_calibration(model.up3.aq.calibration_statistic())
    path = tmp_path / "model.onnx"
    export_onnx(model, (x,), path, ["image"])
    assert path.stat().st_size > 0
    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    transposed = [n for n in graph.node if n.op_type == "ConvTranspose"]
    assert len(transposed) == 3
    for node, channels in zip(transposed, (6, 2, 5)):
        dq = producers[node.input[1]]  # the weight comes through DequantizeLinear(QuantizeLinear(.))
        assert dq.op_type == "DequantizeLinear" and producers[dq.input[0]].op_type == "QuantizeLinear"
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in dq.attribute}
        assert attributes["axis"] == 1
        scale = onnx.numpy_helper.to_array(producers[dq.input[1]].attribute[0].t)
        assert scale.shape == (channels,)
    session = onnxruntime.InferenceSession(str(path))
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=1e-5)
