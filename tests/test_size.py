"""Size and compression on a model whose numbers are worked out by hand."""
import pytest
import torch
from torch import nn

from quantlab.metrics.size import size_report
from quantlab.quant.editing import Rule, apply_recipe


def test_size_and_compression_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(10, 5, bias=False))
    # float: conv 108 + 4, BN 4 + 4, linear 50 -> 170 parameters x 4 bytes = 680 bytes
    assert size_report(model)["bytes"] == 680 and size_report(model)["compression"] == 1.0
    apply_recipe(model, [Rule("0", "symmetric", 4), Rule("2", "lsq", 2)], {})
    report = size_report(model)
    # conv weight 108 x 4 bits = 54 B, bias 16 B; BN 32 B; linear 50 x 2 bits = 12.5 B
    # plus the LSQ step (1 float) = 4 B
    assert report["bytes"] == pytest.approx(54 + 16 + 32 + 12.5 + 4)
    assert report["float_bytes"] == 680 + 4
    assert report["compression"] == pytest.approx(684 / 118.5)
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["0"]["bits"] == 4 and rows["0"]["bytes"] == 70 and rows["2"]["bytes"] == 12.5
    assert rows["2.wq"]["bytes"] == 4


def test_attention_projections_are_counted_at_their_bits():
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    assert size_report(model)["bytes"] == (3 * 8 * 8 + 3 * 8 + 8 * 8 + 8) * 4
    report = apply_recipe(model, [Rule("0", "symmetric", 4)], {})
    assert [(r["layer"], r["type"]) for r in report] == [("0", "MultiheadAttention")]
    size = size_report(model)
    # in_proj 192 x 4 bits = 96 B + bias 24 x 4 B; out_proj 64 x 4 bits = 32 B + bias 8 x 4 B
    assert size["bytes"] == 96 + 96 + 32 + 32
    rows = {r["layer"]: r for r in size["layers"]}
    assert rows["0"]["bits"] == 4 and rows["0.out_proj"]["bits"] == 4


def test_bops_by_hand_follow_traced_shapes_and_bits():
    from quantlab.metrics.cost import cost_report
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    run = lambda m: m(torch.zeros(1, 3, 7, 7))
    # conv: output 4 x 3 x 3 = 36 values x 27 MACs = 972; linear: 5 x 36 = 180
    report = cost_report(model, run)
    assert [r["macs"] for r in report["layers"]] == [972, 180]
    assert report["bops"] == report["float_bops"] == (972 + 180) * 32 * 32
    apply_recipe(model, [Rule("0", "lsq", 4), Rule("3", "symmetric", 2, act_algorithm="ste", act_bits=8)], {})
    report = cost_report(model, run)
    assert report["bops"] == 972 * 4 * 32 + 180 * 2 * 8
    assert report["bops_reduction"] == pytest.approx((972 + 180) * 1024 / (972 * 128 + 180 * 16))


def test_attention_bops_count_projections_and_products_apart():
    from quantlab.metrics.cost import cost_report
    model = nn.Sequential()
    model.add_module("attn", nn.MultiheadAttention(8, 2))
    run = lambda m: m.attn(torch.zeros(5, 1, 8), torch.zeros(7, 1, 8), torch.zeros(7, 1, 8))
    apply_recipe(model, [Rule("attn", "symmetric", 4)], {})
    report = cost_report(model, run)
    # q: 5 x 8 x 8, k and v: 7 x 8 x 8 each -> 1216; out: 5 x 64 = 320; q.k and a.v: 2 x 5 x 7 x 8
    assert [r["macs"] for r in report["layers"]] == [1216, 320]
    assert report["attention_macs"] == 560
    assert report["bops"] == (1216 + 320) * 4 * 32 + 560 * 32 * 32
