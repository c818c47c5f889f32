"""The MQAT reference code's quantized checkpoint layout, tested unchanged.

A reference file is built here from a synthetic Widedepth model whose FPN is 2-bit INQ:
keys under `model.`, the backbone registered a second time, INQ tensors `weight`,
`weight_frozen`, `weight_s` on each conv, and the fold / training sections.
"""
from __future__ import annotations

import json

import pytest
import torch

from problems.SwissCube.Widedepth import build_task
from quantlab.errors import CheckpointError
from quantlab.quant import reference
from quantlab.quant.algorithms.inq import INQController, INQWeight
from quantlab.quant.editing import Rule, apply_recipe
from tests.conftest import REPO, config
from tests.test_engine import TINY_SET, exp_dir, main_cmd, run


def tiny_task():
    cfg = config("SwissCube/Widedepth", "mini", TINY_SET)
    return build_task(cfg, REPO)


def reference_file(model: torch.nn.Module) -> dict:
    """Our quantized model in the reference code's layout."""
    network = {}
    for key, value in model.state_dict().items():
        network["model." + key.replace(".wq.weight_frozen", ".weight_frozen").replace(".wq.weight_s", ".weight_s")] = value
        if key.startswith("backbone."):
            network[key] = value.clone()  # the wrapper registers the backbone twice
    return {"fold": {"i_epoch": 30, "metrics": {"ADI-0.1d": 0.5}}, "network": network,
            "training": {"optimizer": {}, "lr_scheduler": {}, "quantize": [{"fraction": 1.0}]}}


def inq_fpn_model(task, bits: int = 2) -> torch.nn.Module:
    torch.manual_seed(3)
    model = task.build_network().eval()
    apply_recipe(model, [Rule("fpn", "inq", bits)], task.groups)
    INQController(model, {0: 1.0}).on_epoch_start(0)
    return model


def test_inq_bits_is_the_smallest_grid_holding_the_values():
    s = torch.tensor([0.9])
    assert reference.inq_bits(torch.tensor([-0.9, 0.0, 0.9, float("nan")]), s, "x") == 2
    assert reference.inq_bits(torch.tensor([-0.3, 0.6, 0.9]), s, "x") == 3     # steps of s / 3
    assert reference.inq_bits(torch.tensor([0.9 * 5 / 7]), s, "x") == 4        # steps of s / 7
    with pytest.raises(CheckpointError, match="x: weight_frozen values lie on no INQ grid"):
        reference.inq_bits(torch.tensor([0.9 * 0.123457]), s, "x")


def test_reference_file_loads_into_a_float_network_with_identical_outputs(tmp_path):
    task = tiny_task()
    quantized = inq_fpn_model(task)
    state, layers, copies = reference.convert(reference_file(quantized), "model.", "ref.pth")
    assert set(layers) == {n for n, m in quantized.named_modules() if isinstance(getattr(m, "wq", None), INQWeight)}
    assert set(layers.values()) == {2} and copies and all(k.startswith("backbone.") for k in copies)
    fresh = task.build_network().eval()
    report = reference.quantize_like(fresh, layers, state, "ref.pth")
    assert {r["layer"] for r in report} == set(layers) and {r["bits"] for r in report} == {2}
    task.load_weights(fresh, state, "ref.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(fresh(x), quantized(x)):
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    # a recipe that made those layers 4-bit LSQ contradicts the file
    contradicting = task.build_network()
    apply_recipe(contradicting, [Rule("fpn", "lsq", 4)], task.groups)
    with pytest.raises(CheckpointError, match=r"fpn\..* holds 2-bit INQ weights \(3 levels\), the recipe makes it "
                                              r"LSQWeight"):
        reference.quantize_like(contradicting, layers, state, "ref.pth")


def test_a_recipe_whose_grid_does_not_hold_the_files_values_is_refused(monkeypatch):
    """The reference config's FPN has 15 levels (4 bits: steps of s/7). A 5-bit INQ recipe
    (31 levels, steps of s/15) has more bits but not those levels: export would move the
    weights (by up to 0.029 on the reference file), so it is refused; 8 bits (255 levels,
    steps of s/127) neither; a 3-bit file's levels (s/3) are not on 4 bits' either. Grids
    that hold the values (the file's own, 2 bits on 4) load. The file's scales are loaded,
    never searched."""
    from quantlab.quant import quantizers
    task = tiny_task()
    four = reference.convert(reference_file(inq_fpn_model(task, 4)), "model.", "ref.pth")
    two = reference.convert(reference_file(inq_fpn_model(task, 2)), "model.", "ref.pth")
    monkeypatch.setattr(quantizers, "inq_scale", lambda *a: pytest.fail("a loaded INQ scale was searched"))
    for recipe_bits, (state, layers, _), holds in ((5, four, False), (8, four, False), (4, four, True),
                                                   (4, two, True), (3, four, False)):
        model = task.build_network()
        apply_recipe(model, [Rule("fpn", "inq", recipe_bits)], task.groups, loading=True)
        if holds:
            assert reference.quantize_like(model, layers, state, "ref.pth") == []
        else:
            with pytest.raises(CheckpointError, match=rf"holds 4-bit INQ weights \(15 levels\), the recipe makes it "
                                                      rf"INQWeight {recipe_bits}-bit, whose {2 ** recipe_bits - 1} "
                                                      "levels do not hold the file's 15"):
                reference.quantize_like(model, layers, state, "ref.pth")
    fresh = task.build_network()
    assert {r["bits"] for r in reference.quantize_like(fresh, four[1], four[0], "ref.pth")} == {4}


def test_mode_test_evaluates_a_reference_file_and_prints_its_size(storage, tmp_path):
    path = tmp_path / "mqat_fpn_2bit.pth"
    torch.save(reference_file(inq_fpn_model(tiny_task())), path)
    out = run(main_cmd("--mode", "test", "--ckpt", str(path)), storage, ranks=2)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MQAT reference layout" in out.stdout and "x inq 2-bit" in out.stdout
    exp = exp_dir(storage, 0)
    assert len(list((exp / "eval").glob("test_mqat_fpn_2bit_*/metrics.json"))) == 1
    report = json.loads((exp / "quant_report.json").read_text())
    assert {r["layer"].split(".")[0] for r in report["layers"]} == {"fpn"}
    assert report["size"]["compression"] > 1
