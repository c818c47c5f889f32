"""Integer export: packed codes round-trip, dequantized weights equal the fake-quant ones,
and a model rebuilt from the file gives the exported model's outputs."""
import pytest
import torch
from torch import nn

from quantlab.engine.checkpoint import load
from quantlab.errors import CheckpointError
from quantlab.metrics.size import size_report
from quantlab.quant.algorithms.inq import INQController
from quantlab.quant.editing import Rule, apply_recipe
from quantlab.quant.export import dequantize, export_integer, load_integer, pack, unpack


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip_every_bit_width(bits):
    torch.manual_seed(bits)
    index = torch.randint(0, 2 ** bits, (37,))
    packed = pack(index, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-37 * bits // 8)
    assert torch.equal(unpack(packed, bits, 37), index)


def test_the_sign_code_is_a_grid_of_two_codes_without_zero():
    from quantlab.quant.algorithms.symmetric import SymmetricWeight
    w = torch.tensor([[0.5, -0.25], [0.0, -1.0]])
    grid = SymmetricWeight(1).grid(w)
    values = SymmetricWeight(1)(w)  # sign(W) x mean|W|, 0 counts as +
    assert (grid.low, grid.high, grid.step, grid.levels) == (-1, 1, 2, 2) and float(grid.scale) == 0.4375
    assert grid.codes(values).tolist() == [[1, -1], [1, -1]] and grid.index(values).tolist() == [[1, 0], [1, 0]]
    assert torch.equal(grid.codes(values) * grid.scale, values)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 4, 1)
        self.d = nn.Conv2d(4, 8, 1)
        self.attn = nn.MultiheadAttention(8, 2)
        self.e = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.d(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))
        tokens = x.flatten(2).permute(2, 0, 1)
        return self.e(self.attn(tokens, tokens, tokens)[0])


RECIPE = [Rule("a", "symmetric", 4, per_channel=True), Rule("b", "symmetric", 1),
          Rule("c", "lsq", 3, act_algorithm="ste", act_bits=8), Rule("d", "lsq", 4, per_channel=True),
          Rule("attn", "inq", 2), Rule("e", "inq", 3)]


def quantized_net(seed: int) -> Net:
    torch.manual_seed(seed)
    net = Net().eval()
    apply_recipe(net, RECIPE, {})
    return net


def test_integer_file_round_trip_gives_the_same_outputs(tmp_path):
    net = quantized_net(0)
    x = torch.randn(2, 3, 5, 5)
    net(x)                                             # calibrate the STE range
    net.c.aq.end_calibration(net.c.aq.calibration_statistic())
    INQController(net, {0: 1.0}).on_epoch_start(0)     # INQ layers fully frozen
    path = tmp_path / "model_int.pt"
    size = export_integer(net, path, [])
    file = load(path)
    for key, module, bits in (("a.weight", net.a, 4), ("b.weight", net.b, 1), ("c.weight", net.c, 3),
                              ("d.weight", net.d, 4), ("attn.in_proj_weight", net.attn, 2),
                              ("attn.out_proj.weight", net.attn.out_proj, 2), ("e.weight", net.e, 3)):
        entry = file["layers"][key]
        assert entry["bits"] == bits
        expected = module.wq(module.float_weight()).detach()
        assert torch.allclose(dequantize(entry), expected, rtol=1e-6, atol=1e-7), key
        index = unpack(entry["codes"], bits, expected.numel())
        assert index.min() >= 0 and index.max() < 2 ** bits, key
    # the packed codes are what the size report counts for those weights (+ per-layer scales)
    packed = sum(e["codes"].numel() for e in file["layers"].values())
    quantized_bits = sum(r["bytes"] for r in size_report(net)["layers"] if r["bits"] < 32)
    assert packed <= quantized_bits + 8 * len(file["layers"])
    assert size < 3 * size_report(net)["float_bytes"]  # float bytes incl. format overhead

    fresh = quantized_net(1)                           # other random weights
    load_integer(fresh, file, str(path))
    assert not bool(fresh.c.aq.calibrating)
    torch.testing.assert_close(fresh(x), net(x), rtol=1e-5, atol=1e-6)


def test_partially_frozen_inq_and_mismatched_models_are_refused(tmp_path):
    net = quantized_net(0)
    INQController(net, {0: 0.5}).on_epoch_start(0)
    with pytest.raises(CheckpointError, match="attn: cannot export .*50% frozen"):
        export_integer(net, tmp_path / "x.pt", [])
    INQController(net, {0: 1.0}).on_epoch_start(0)
    net.c.aq.end_calibration(torch.tensor(1.0))
    export_integer(net, tmp_path / "x.pt", [])
    other = Net()
    apply_recipe(other, [Rule("a", "symmetric", 8)], {})
    with pytest.raises(CheckpointError, match="quantized layers differ"):
        load_integer(other, load(tmp_path / "x.pt"), "x.pt")
    wrong_bits = Net()
    apply_recipe(wrong_bits, RECIPE[:1] + [Rule("b", "symmetric", 2)] + RECIPE[2:], {})
    with pytest.raises(CheckpointError, match=r"b.weight is 1-bit .* 2-bit"):
        load_integer(wrong_bits, load(tmp_path / "x.pt"), "x.pt")


def test_onnx_export_has_qdq_pairs_and_onnxruntime_matches_pytorch(tmp_path):
    import onnx
    import onnxruntime
    from quantlab.quant.qdq import export_onnx
    net = quantized_net(0)
    x = torch.randn(1, 3, 5, 5)
    net(x)
    net.c.aq.end_calibration(net.c.aq.calibration_statistic())
    INQController(net, {0: 1.0}).on_epoch_start(0)
    path = tmp_path / "model.onnx"
    export_onnx(net, (x,), path, ["image"])
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # weights of a, b (the 1-bit sign code: +-alpha on codes -1, +1), c, d, attn (in + out),
    # e, and c's input: 8 pairs
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 8
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = net(x)
    torch.manual_seed(0)
    with torch.no_grad():
        unquantized = Net().eval()(x)
    # float32 sums differ between the runtimes, and a value on a rounding tie may land one
    # step over: the gap stays a small fraction of what quantization itself changes
    gap = (torch.from_numpy(out) - expected).abs().max()
    assert gap <= 1e-3 * expected.abs().max()
    assert gap <= 0.05 * (unquantized - expected).abs().max()
