"""Recipe matching, groups, exclusions, overrides and the no-match error."""
import pytest
import torch
from torch import nn

from quantlab.errors import ConfigError
from quantlab.quant.algorithms.inq import INQWeight
from quantlab.quant.algorithms.lsq import LSQWeight
from quantlab.quant.algorithms.symmetric import SymmetricWeight
from quantlab.quant.editing import Rule, apply_recipe
from quantlab.quant.layers import QuantConv2d, QuantLinear


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.fpn = nn.ModuleDict({"lateral": nn.Conv2d(4, 4, 1), "out": nn.Conv2d(4, 4, 3)})
        self.head = nn.Linear(4, 2)
        self.norm = nn.BatchNorm2d(4)


GROUPS = {"backbone": r"backbone\..*", "fpn": r"fpn\..*", "head": r"head(\..*)?"}


def test_groups_rules_in_order_and_exclusions():
    torch.manual_seed(0)
    model = Toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rules = [Rule("backbone", "lsq", 4), Rule("fpn", "inq", 2), Rule(r"fpn\.out", "symmetric", 8),
             Rule("head", "symmetric", 8)]
    report = apply_recipe(model, rules, GROUPS, exclude=[r"backbone\.0"])
    by_layer = {r["layer"]: (r["algorithm"], r["bits"]) for r in report}
    assert by_layer == {"backbone.2": ("lsq", 4), "fpn.lateral": ("inq", 2), "fpn.out": ("symmetric", 8),
                        "head": ("symmetric", 8)}
    assert type(model.backbone[0]) is nn.Conv2d          # excluded (first layer)
    assert isinstance(model.backbone[2].wq, LSQWeight)
    assert isinstance(model.fpn["lateral"].wq, INQWeight)
    assert isinstance(model.fpn["out"].wq, SymmetricWeight)   # the later rule won
    assert isinstance(model.head, QuantLinear) and isinstance(model.fpn["out"], QuantConv2d)
    # float weights kept, not re-initialised
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_a_pattern_that_matches_nothing_is_named():
    with pytest.raises(ConfigError, match=r"'neck\\\\..\*' matches no"):
        apply_recipe(Toy(), [Rule(r"neck\..*", "lsq", 4)], GROUPS)


def test_recipe_entries_are_checked():
    with pytest.raises(ConfigError, match="unknown recipe key.*'bit'"):
        Rule.from_config({"modules": "fpn", "algorithm": "inq", "bit": 2}, "quantize.rules[0]")
    with pytest.raises(ConfigError, match="algorithm 'dorefa'"):
        Rule.from_config({"modules": "fpn", "algorithm": "dorefa", "bits": 2}, "quantize.rules[0]")
    with pytest.raises(ConfigError, match="inq takes 2-8 bits, got 1"):
        Rule.from_config({"modules": "fpn", "algorithm": "inq", "bits": 1}, "quantize.rules[0]")
    assert Rule.from_config({"modules": "fpn", "algorithm": "symmetric", "bits": 1}, "r").bits == 1


def test_widedepth_groups_partition_its_layers_and_quantize_cleanly():
    import re

    from problems.SwissCube.Widedepth.network import Widedepth
    from problems.SwissCube.Widedepth.quantize import GROUPS, SETS
    from quantlab.quant.editing import quantizable
    model = Widedepth(width=0.125, depth=0.25, fpn_channels=32, head_convs=2, gn_groups=8)
    names = list(quantizable(model))
    owners = {n: [g for g, p in GROUPS.items() if re.fullmatch(p, n)] for n in names}
    assert all(len(o) == 1 for o in owners.values()), owners
    # the named set `first_last` (two regexes) works as an exclusion by name
    report = apply_recipe(model, [Rule("fpn", "inq", 2), Rule("backbone", "lsq", 8), Rule("head", "lsq", 8)],
                          {**GROUPS, **SETS}, exclude=["first_last"])
    quantized = {r["layer"] for r in report}
    assert "backbone.features.init_block.conv" not in quantized and "head.pose_pred" not in quantized
    assert len(quantized) == len(names) - 3
    logits, poses = model(torch.randn(2, 3, 64, 64))
    assert torch.isfinite(torch.cat([p.flatten() for p in logits + poses])).all()


def test_the_docs_worked_quantizer_is_one_file_that_every_entry_point_accepts(tmp_path):
    """docs/quantization.md's example family, run as written: the registry lists it, a
    rule takes it within its bits, the editor builds its quantizer, the schema's
    `quantizers: weight` choices take it; removed again afterwards."""
    import re

    from quantlab.quant import algorithms
    from tests.conftest import REPO, config
    text = (REPO / "docs" / "quantization.md").read_text()
    section = text[text.index("## Adding a quantizer"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "pow2" not in algorithms.REGISTRY
    namespace: dict = {"__name__": "quantlab.quant.algorithms.pow2"}
    try:
        exec(compile(code, "docs/quantization.md", "exec"), namespace)
        assert "pow2" in algorithms.names("weight") and "pow2" not in algorithms.names("activation")
        with pytest.raises(ConfigError, match="pow2 takes 2-8 bits, got 1"):
            Rule.from_config({"modules": "fpn", "algorithm": "pow2", "bits": 1}, "quantize.rules[0]")
        model = Toy()
        apply_recipe(model, [Rule.from_config({"modules": "fpn", "algorithm": "pow2", "bits": 3}, "r")], GROUPS)
        layer = model.fpn["out"]
        assert type(layer.wq).__name__ == "Pow2Weight"
        w = layer.weight.detach()
        q = layer.quantized_weight().detach()
        ratio = q.abs() / w.abs().max()  # every value on sign(w) max|w| 2^k, k in -3..0
        assert torch.equal(torch.sign(q), torch.sign(w))
        assert all(any(torch.isclose(r, torch.tensor(2.0 ** -k)) for k in range(4)) for r in ratio.flatten())
        cfg = config("SwissCube/Widedepth", sets=["mqat.algorithm=pow2", "hawq.algorithm=pow2"])
        assert cfg["mqat"]["algorithm"] == cfg["hawq"]["algorithm"] == "pow2"
    finally:
        algorithms.REGISTRY.pop("pow2", None)
    with pytest.raises(ConfigError, match=r"'pow2' is not one of \['inq', 'lsq', 'symmetric'\]"):
        config("SwissCube/Widedepth", sets=["hawq.algorithm=pow2"])
