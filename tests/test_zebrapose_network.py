"""ZebraPose's network against an official checkpoint layout built here from the spec
(shared/reference/zebrapose.md §1), not from our model: keys, shapes, parameter counts,
the aliased encoder keys, the strict load, and the forward against the spec's, written here
in functional ops over an official file's keys.

How the official file maps: `model_state_dict` holds 392 entries; the 96 `net.resnet.resnet.*`
entries duplicate the stem, layer1 and layer2 and are dropped; the other 296 are our keys.
Our model has one more, the buffer `code_error_hist` (loss state, absent officially): the
loader supplies the model's own value, so loading keeps it unset (NaN).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from problems.LINEMOD.ZebraPose.network import OFFICIAL_ALIASES, ZebraPoseNet, official_state
from quantlab.engine.checkpoint import load_matching
from quantlab.errors import CheckpointError

PAPER_PARAMS = 29_112_977
MINI = dict(width=0.125, blocks=[3, 4, 6, 3], code_bits=8)
#: the official duplicates (torchvision's children 0 conv1, 1 bn1, 4 layer1, 5 layer2)
ALIASES = {"net.resnet.resnet.0.": "net.resnet.resnet_layer_1.0.",
           "net.resnet.resnet.1.": "net.resnet.resnet_layer_1.1.",
           "net.resnet.resnet.4.": "net.resnet.resnet_layer_2.1.",
           "net.resnet.resnet.5.": "net.resnet.resnet_layer_3.0."}
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def official_shapes(width: float = 1.0, blocks: tuple[int, ...] = (3, 4, 6, 3),
                    bits: int = 16) -> dict[str, tuple[int, ...]]:
    """Every key of `BinaryCodeNet_Deeplab.state_dict()` and its shape, aliases included."""
    c64, c128, c256, c512 = (max(1, int(round(c * width))) for c in (64, 128, 256, 512))
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(key: str, c_out: int, c_in: int, k: int, bias: bool = False) -> None:
        shapes[key + ".weight"] = (c_out, c_in, k, k)
        if bias:
            shapes[key + ".bias"] = (c_out,)

    def bn(key: str, c: int) -> None:
        shapes.update({f"{key}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{key}.num_batches_tracked"] = ()

    def layer(key: str, c_in: int, c_out: int, n: int, strided: bool) -> None:
        for i in range(n):
            conv(f"{key}.{i}.conv1", c_out, c_in if i == 0 else c_out, 3)
            bn(f"{key}.{i}.bn1", c_out)
            conv(f"{key}.{i}.conv2", c_out, c_out, 3)
            bn(f"{key}.{i}.bn2", c_out)
            if i == 0 and (strided or c_in != c_out):
                conv(f"{key}.0.downsample.0", c_out, c_in, 1)
                bn(f"{key}.0.downsample.1", c_out)

    def up(key: str, c_in: int, c: int) -> None:
        shapes[f"{key}.0.weight"] = (c_in, c, 3, 3)  # ConvTranspose2d: (in, out, k, k)
        bn(f"{key}.1", c)
        conv(f"{key}.3", c, c, 3)
        bn(f"{key}.4", c)
        conv(f"{key}.6", c, c, 3)
        bn(f"{key}.7", c)

    r, a = "net.resnet", "net.aspp"
    conv(f"{r}.resnet_layer_1.0", c64, 3, 7)
    bn(f"{r}.resnet_layer_1.1", c64)
    layer(f"{r}.resnet_layer_2.1", c64, c64, blocks[0], False)
    layer(f"{r}.resnet_layer_3.0", c64, c128, blocks[1], True)
    layer(f"{r}.layer4", c128, c256, blocks[2], False)
    layer(f"{r}.layer5", c256, c512, blocks[3], False)
    for name, k in (("1x1_1", 1), ("3x3_1", 3), ("3x3_2", 3), ("3x3_3", 3), ("1x1_2", 1)):
        conv(f"{a}.conv_{name}", c256, c512, k, bias=True)
        bn(f"{a}.bn_conv_{name}", c256)
    conv(f"{a}.conv_1x1_3", c256, 5 * c256, 1, bias=True)
    bn(f"{a}.bn_conv_1x1_3", c256)
    up(f"{a}.upsample_1", c256, c256)
    up(f"{a}.upsample_2", c256 + c64, c256)
    conv(f"{a}.conv_1x1_4", 1 + bits, c256 + c64, 1, bias=True)
    for alias, target in ALIASES.items():
        shapes.update({alias + k[len(target):]: s for k, s in list(shapes.items()) if k.startswith(target)})
    return shapes


def official_file(**kwargs) -> dict:
    """An official checkpoint with random weights; every alias equals its target."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in official_shapes(**kwargs).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 10**6, shape, generator=gen)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen)
    for alias, target in ALIASES.items():
        for key in [k for k in state if k.startswith(alias)]:
            state[key] = state[target + key[len(alias):]].clone()
    return {"model_state_dict": state, "optimizer_state_dict": {}, "iteration_step": 1000, "best_score": 0.5}


def unique_params(state: dict) -> int:
    """Parameters of an official state_dict, counted once and without BN statistics."""
    return sum(v.numel() for k, v in state.items()
               if not k.startswith("net.resnet.resnet.") and not k.endswith(BN_STATS))


def conv_weights(state: dict, prefix: str) -> int:
    return sum(v.numel() for k, v in state.items() if k.startswith(prefix) and k.endswith(".weight") and v.dim() == 4)


@pytest.fixture(scope="module")
def paper() -> tuple[ZebraPoseNet, dict]:
    return ZebraPoseNet(), official_file()


def test_official_layout_matches_the_spec(paper):
    _, file = paper
    state = file["model_state_dict"]
    assert len(state) == 392
    assert unique_params(state) == PAPER_PARAMS
    groups = {"net.resnet.resnet.": (96, 1_347_904), "net.resnet.resnet_layer_1.": (6, 9_536),
              "net.resnet.resnet_layer_2.": (36, 221_952), "net.resnet.resnet_layer_3.": (54, 1_116_416),
              "net.resnet.layer4.": (78, 6_822_400), "net.resnet.layer5.": (42, 13_114_368),
              "net.aspp.upsample_1.": (18, 1_771_008), "net.aspp.upsample_2.": (18, 1_918_464),
              "net.aspp.conv_1x1_4.": (2, 5_457)}
    for prefix, (entries, params) in groups.items():
        keys = [k for k in state if k.startswith(prefix)]
        assert len(keys) == entries, prefix
        assert sum(state[k].numel() for k in keys if not k.endswith(BN_STATS)) == params, prefix
    rest = unique_params({k: v for k, v in state.items() if k.startswith("net.aspp.")
                          and not k.startswith(("net.aspp.upsample", "net.aspp.conv_1x1_4"))})
    assert rest == 4_133_376


def test_conv_weight_totals(paper):
    model, file = paper
    state = {k: v for k, v in file["model_state_dict"].items() if not k.startswith("net.resnet.resnet.")}
    assert conv_weights(state, "net.resnet.") == 21_267_648
    assert conv_weights(state, "net.aspp.") == 7_820_608
    transposed = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(transposed) == 2 and sum(m.weight.numel() for m in transposed) == 1_327_104
    ours = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    assert len(ours) == 49
    assert sum(v for n, v in ours.items() if n.startswith("net.resnet.")) == 21_267_648
    assert sum(v for n, v in ours.items() if n.startswith("net.aspp.")) == 7_820_608


def test_paper_network_size_and_keys(paper):
    model, file = paper
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k: s for k, s in official_shapes().items() if not k.startswith("net.resnet.resnet.")}
    assert ours.pop("code_error_hist") == (16,)
    assert ours == expected


def test_no_module_is_registered_twice(paper):
    """Pitfall 1: an aliased module would be replaced under one name and run under another."""
    model, _ = paper
    assert len(list(model.named_modules(remove_duplicate=False))) == len(list(model.named_modules()))
    assert len(list(model.named_parameters(remove_duplicate=False))) == len(list(model.parameters()))


def test_official_checkpoint_loads_strictly(paper):
    model, file = paper
    assert OFFICIAL_ALIASES == ALIASES
    state, dropped = official_state(file, "x")
    assert len(state) == 296 and len(dropped) == 96
    assert all(k.startswith("net.resnet.resnet.") for k in dropped)
    assert load_matching(model, {**state, "code_error_hist": model.code_error_hist.clone()}, "x") == {}
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert torch.isnan(loaded["code_error_hist"]).all()


def test_raw_state_dict_is_accepted(paper):
    _, file = paper
    state, dropped = official_state(file["model_state_dict"], "x")
    assert len(state) == 296 and len(dropped) == 96


def test_renamed_key_is_named(paper):
    model, file = paper
    raw = dict(file["model_state_dict"])
    raw["net.aspp.conv_1x1_5.weight"] = raw.pop("net.aspp.conv_1x1_4.weight")
    state, _ = official_state(raw, "ckpt.pth")
    with pytest.raises(CheckpointError, match="conv_1x1_5.weight") as info:
        load_matching(model, {**state, "code_error_hist": model.code_error_hist}, "ckpt.pth")
    assert str(info.value).startswith("ckpt.pth: ") and "net.aspp.conv_1x1_4.weight" in str(info.value)


@pytest.mark.parametrize("change", ["differs", "no_target", "unknown_alias"])
def test_bad_alias_is_named(paper, change):
    _, file = paper
    raw = dict(file["model_state_dict"])
    alias = "net.resnet.resnet.4.0.conv1.weight"
    if change == "differs":
        raw[alias] = raw[alias] + 1
    elif change == "no_target":
        del raw["net.resnet.resnet_layer_2.1.0.conv1.weight"]
    else:
        alias = "net.resnet.resnet.2.weight"
        raw[alias] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=alias.replace(".", r"\.")) as info:
        official_state(raw, "ckpt.pth")
    assert str(info.value).startswith("ckpt.pth: ") and "\n" not in str(info.value)


def _bn(x: torch.Tensor, state: dict, key: str) -> torch.Tensor:
    return F.batch_norm(x, state[f"{key}.running_mean"], state[f"{key}.running_var"], state[f"{key}.weight"],
                        state[f"{key}.bias"], training=False, eps=1e-5)


def _block(x: torch.Tensor, state: dict, key: str, stride: int, dilation: int) -> torch.Tensor:
    """ZP's BasicBlock (spec 1.1): both 3x3 convs dilated, 1x1 downsample when keyed."""
    out = F.relu(_bn(F.conv2d(x, state[f"{key}.conv1.weight"], None, stride, dilation, dilation), state, f"{key}.bn1"))
    out = _bn(F.conv2d(out, state[f"{key}.conv2.weight"], None, 1, dilation, dilation), state, f"{key}.bn2")
    if f"{key}.downsample.0.weight" in state:
        x = _bn(F.conv2d(x, state[f"{key}.downsample.0.weight"], None, stride), state, f"{key}.downsample.1")
    return F.relu(out + x)


def _stage(x: torch.Tensor, state: dict, key: str, stride: int, dilation: int) -> torch.Tensor:
    blocks = sorted({int(k[len(key) + 1:].split(".")[0]) for k in state if k.startswith(key + ".")})
    for i in blocks:
        x = _block(x, state, f"{key}.{i}", stride if i == 0 else 1, dilation)
    return x


def _upsample(x: torch.Tensor, state: dict, key: str) -> torch.Tensor:
    x = F.relu(_bn(F.conv_transpose2d(x, state[f"{key}.0.weight"], None, 2, 1, 1), state, f"{key}.1"))
    x = F.relu(_bn(F.conv2d(x, state[f"{key}.3.weight"], None, 1, 1), state, f"{key}.4"))
    return F.relu(_bn(F.conv2d(x, state[f"{key}.6.weight"], None, 1, 1), state, f"{key}.7"))


def spec_forward(state: dict, image: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BinaryCodeNet_Deeplab's forward as shared/reference/zebrapose.md §1.1-1.2 describes
    it, in functional ops over the keys of an official checkpoint: a second implementation."""
    r, a = "net.resnet", "net.aspp"
    x_128 = F.relu(_bn(F.conv2d(image, state[f"{r}.resnet_layer_1.0.weight"], None, 2, 3), state,
                       f"{r}.resnet_layer_1.1"))
    x_64 = _stage(F.max_pool2d(x_128, 3, 2, 1), state, f"{r}.resnet_layer_2.1", 1, 1)
    x = _stage(x_64, state, f"{r}.resnet_layer_3.0", 2, 1)
    x = _stage(_stage(x, state, f"{r}.layer4", 1, 2), state, f"{r}.layer5", 1, 4)

    def branch(name: str, inp: torch.Tensor, dilation: int = 0) -> torch.Tensor:
        """conv (3x3 with padding = dilation, or 1x1), BN, ReLU."""
        conv = F.conv2d(inp, state[f"{a}.conv_{name}.weight"], state[f"{a}.conv_{name}.bias"], 1, dilation,
                        max(dilation, 1))
        return F.relu(_bn(conv, state, f"{a}.bn_conv_{name}"))
    pooled = branch("1x1_2", F.adaptive_avg_pool2d(x, 1))
    fused = branch("1x1_3", torch.cat([branch("1x1_1", x), branch("3x3_1", x, 6), branch("3x3_2", x, 12),
                                       branch("3x3_3", x, 18),
                                       F.interpolate(pooled, size=x.shape[2:], mode="bilinear")], 1), 0)
    up = _upsample(torch.cat([_upsample(fused, state, f"{a}.upsample_1"), x_64], 1), state, f"{a}.upsample_2")
    out = F.conv2d(torch.cat([up, x_128], 1), state[f"{a}.conv_1x1_4.weight"], state[f"{a}.conv_1x1_4.bias"])
    return out[:, :1], out[:, 1:1 + bits]


def test_paper_network_loaded_from_an_official_file_computes_the_specs_forward(paper):
    """The paper network, with an official checkpoint's weights (scaled to keep activations
    finite through 40 layers), must compute what the spec's forward computes over the
    file's keys: the output stride, the dilations of both convs of a block, the ASPP
    branches and the skip concatenations all change the values, not only the shapes."""
    _, file = paper
    model = ZebraPoseNet().eval()
    scaled = {k: v / (v[0].numel() ** 0.5) if v.dim() == 4 else v for k, v in file["model_state_dict"].items()}
    state, _ = official_state(scaled, "ckpt.pth")
    assert load_matching(model, {**state, "code_error_hist": model.code_error_hist}, "ckpt.pth") == {}
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mask, code = model(image)
        want_mask, want_code = spec_forward(scaled, image, bits=16)
    assert mask.shape == (1, 1, 128, 128) and code.shape == (1, 16, 128, 128)
    assert torch.isfinite(want_code).all() and want_code.std() > 0.1 * want_code.abs().mean()
    scale = want_code.abs().max()
    assert torch.allclose(mask, want_mask, rtol=1e-4, atol=1e-5 * scale)
    assert torch.allclose(code, want_code, rtol=1e-4, atol=1e-5 * scale)


def test_mini_network():
    model = ZebraPoseNet(**MINI)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k: s for k, s in official_shapes(0.125, (3, 4, 6, 3), 8).items()
                if not k.startswith("net.resnet.resnet.")}
    assert ours.pop("code_error_hist") == (8,)
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == 458_905  # the spec's ~0.46 M
    for size in (64, 256):
        mask, code = model(torch.randn(2, 3, size, size))
        assert mask.shape == (2, 1, size // 2, size // 2) and code.shape == (2, 8, size // 2, size // 2)


def test_output_channel_0_is_the_mask_then_the_code_msb_first():
    model = ZebraPoseNet(**MINI).eval()
    head = model.net.aspp.conv_1x1_4
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.arange(9.0))
        mask, code = model(torch.randn(1, 3, 64, 64))
    assert (mask == 0).all()
    assert all((code[:, i] == i + 1).all() for i in range(8))


def test_dilations_follow_the_spec():
    modules = dict(ZebraPoseNet(**MINI).named_modules())
    for layer, dilation in (("layer4", 2), ("layer5", 4)):
        convs = [m for n, m in modules.items()
                 if n.startswith(f"net.resnet.{layer}.") and n.endswith(("conv1", "conv2"))]
        assert len(convs) == 2 * {"layer4": 6, "layer5": 3}[layer]
        assert all(c.dilation == (dilation,) * 2 and c.padding == (dilation,) * 2 and c.stride == (1, 1)
                   for c in convs)
    assert modules["net.resnet.resnet_layer_3.0.0.conv1"].stride == (2, 2)
    assert modules["net.resnet.resnet_layer_3.0.0.downsample.0"].stride == (2, 2)
    for i, d in enumerate((6, 12, 18), 1):
        assert modules[f"net.aspp.conv_3x3_{i}"].dilation == (d, d) == modules[f"net.aspp.conv_3x3_{i}"].padding


def test_code_error_hist_starts_unset_and_is_saved():
    model = ZebraPoseNet(**MINI)
    hist = model.state_dict()["code_error_hist"]
    assert hist.dtype == torch.float32 and hist.shape == (8,)
    assert all(math.isnan(v) for v in hist.tolist())
    assert "code_error_hist" in dict(model.named_buffers(recurse=False))
