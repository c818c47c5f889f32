"""Atomic checkpoints, weights-only loading, and the public WDR key layouts."""
import pytest
import torch

from problems.SwissCube.Widedepth.network import Widedepth
from problems.SwissCube.Widedepth.task import WidedepthTask
from quantlab.engine import checkpoint
from quantlab.engine.config import build_config
from quantlab.engine.errors import CheckpointError
from tests.conftest import REPO


def small() -> Widedepth:
    return Widedepth(width=0.125, depth=0.25, fpn_channels=32, head_convs=2, gn_groups=8)


def test_a_crash_while_saving_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1}, path)

    def crash(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": object()}, path)  # needs unpickling an arbitrary class
    with pytest.raises(CheckpointError, match="evil.pt.*weights-only"):
        checkpoint.load(path)


def test_mismatch_names_missing_unexpected_and_shapes():
    model = small()
    state = dict(model.state_dict())
    del state["fpn.top_blocks.p7.weight"]
    state["head.extra.weight"] = torch.zeros(1)
    state["head.cls_logits.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_matching(model, state, "file.pt")
    msg = str(err.value)
    assert "file.pt" in msg and "fpn.top_blocks.p7.weight" in msg and "head.extra.weight" in msg
    assert "head.cls_logits.bias (5,) vs (1,)" in msg


@pytest.mark.parametrize("wrapped", [False, True])
def test_public_wdr_layout_loads_and_reports_dropped_keys(wrapped):
    cfg = build_config(REPO / "cfg/defaults.yaml", REPO / "problems/SwissCube/Widedepth/config.yaml", "mini", [])
    task = WidedepthTask(cfg, REPO / "data")
    source = task.build_network()
    public = dict(source.state_dict())
    public["backbone.output.weight"] = torch.zeros(10, 128)   # DarkNet's ImageNet classifier
    public["anchor_generator.cell_anchors.0"] = torch.zeros(1, 4)
    target = task.build_network()
    dropped = task.load_weights(target, {"model": public} if wrapped else public, "wdr.pth")
    assert sorted(dropped) == ["anchor_generator.cell_anchors.0", "backbone.output.weight"]
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_full_size_wdr_key_names_match_the_public_layout():
    keys = Widedepth().state_dict().keys()
    for key in ("backbone.features.init_block.conv.weight", "backbone.features.stage1.unit1.bn.running_var",
                "backbone.features.stage5.unit5.conv2.conv.weight", "fpn.inner_convs.2.weight",
                "fpn.out_convs.4.bias", "fpn.top_blocks.p6.weight", "fpn.top_blocks.p7.bias",
                "head.cls_tower.9.weight", "head.pose_tower.10.bias", "head.cls_logits.weight",
                "head.pose_pred.weight", "head.scales.4.scale"):
        assert key in keys, key
    assert "backbone.features.stage5.unit6.conv1.conv.weight" not in keys  # 1 + 4 units
