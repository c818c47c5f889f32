"""Atomic checkpoints, weights-only loading, and the public WDR key layouts."""
import numpy as np
import pytest
import torch

from problems.SwissCube.Widedepth.network import Widedepth
from problems.SwissCube.Widedepth.task import WidedepthTask
from quantlab.engine import checkpoint
from quantlab.errors import CheckpointError, ExperimentError
from tests.conftest import REPO, config


def small() -> Widedepth:
    return Widedepth(width=0.125, depth=0.25, fpn_channels=32, head_convs=2, gn_groups=8)


def test_a_crash_while_saving_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1}, path)

    def crash(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(ExperimentError, match=r"last.pt: cannot be written \(disk full\); the previous version"):
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


def official_cell_anchors(strides, sizes):
    """The official WDR anchor generator (model.py: _generate_anchors, _whctrs, _mkanchors)
    for one aspect ratio and one scale per level, written out independently."""
    out = []
    for stride, size in zip(strides, sizes):
        x1, y1, x2, y2 = np.array([1, 1, stride, stride], dtype=float) - 0.5
        w, x_ctr = x2 - x1 + 1, x1 + 0.5 * (x2 - x1)
        ws = w * size / stride
        out.append(torch.tensor([[x_ctr - 0.5 * (ws - 1), x_ctr - 0.5 * (ws - 1),
                                  x_ctr + 0.5 * (ws - 1), x_ctr + 0.5 * (ws - 1)]], dtype=torch.float32))
    return out


@pytest.mark.parametrize("wrapped", [False, True])
def test_public_wdr_layout_loads_and_reports_dropped_keys(wrapped):
    cfg = config("SwissCube/Widedepth")
    task = WidedepthTask(cfg, REPO / "data")
    source = task.build_network()
    public = dict(source.state_dict())
    public["backbone.output.weight"] = torch.zeros(10, 128)   # DarkNet's ImageNet classifier
    anchors = official_cell_anchors(cfg["network"]["strides"], cfg["network"]["anchor_sizes"])
    public.update({f"anchor_generator.cell_anchors.{i}": a for i, a in enumerate(anchors)})
    target = task.build_network()
    dropped = task.load_weights(target, {"model": public} if wrapped else public, "wdr.pth")
    assert dropped == {"re-derived from network.strides and network.anchor_sizes":
                       [f"anchor_generator.cell_anchors.{i}" for i in range(5)],
                       "unused (DarkNet's ImageNet classifier)": ["backbone.output.weight"]}
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    # anchors that another configuration derives are a mismatch, named
    public["anchor_generator.cell_anchors.2"] = anchors[2] * 2
    with pytest.raises(CheckpointError, match=r"cell_anchors.2 is .* the config derives"):
        task.load_weights(task.build_network(), public, "wdr.pth")


def test_cell_centres_are_the_official_anchor_centres():
    """The keypoint decoding centre of cell (i, j) at stride s is (j s + s/2, i s + s/2),
    the centre of the official anchor shifted by the cell's offset."""
    cfg = config("SwissCube/Widedepth", "paper")
    geo = WidedepthTask(cfg, REPO / "data").geo
    centres, sizes, levels = geo.cells
    anchors = official_cell_anchors(cfg["network"]["strides"], cfg["network"]["anchor_sizes"])
    first = 0
    for level, (stride, anchor) in enumerate(zip(cfg["network"]["strides"], anchors)):
        n = -(-cfg["input"]["size"] // stride)
        x1, y1, x2, y2 = anchor[0].tolist()
        i, j = n - 1, n // 2  # a cell off the diagonal: last row, middle column
        index = first + i * n + j
        assert centres[index].tolist() == [j * stride + (x1 + x2) / 2, i * stride + (y1 + y2) / 2]
        assert centres[index].tolist() == [j * stride + stride / 2, i * stride + stride / 2]
        assert sizes[index] == x2 - x1 + 1 == cfg["network"]["anchor_sizes"][level] and levels[index] == level
        first += n * n
    assert centres[0].tolist() == [4.0, 4.0]  # stride 8: not the pixel centre 3.5


def test_full_size_wdr_key_names_match_the_public_layout():
    keys = Widedepth().state_dict().keys()
    for key in ("backbone.features.init_block.conv.weight", "backbone.features.stage1.unit1.bn.running_var",
                "backbone.features.stage5.unit5.conv2.conv.weight", "fpn.inner_convs.2.weight",
                "fpn.out_convs.4.bias", "fpn.top_blocks.p6.weight", "fpn.top_blocks.p7.bias",
                "head.cls_tower.9.weight", "head.pose_tower.10.bias", "head.cls_logits.weight",
                "head.pose_pred.weight", "head.scales.4.scale"):
        assert key in keys, key
    assert "backbone.features.stage5.unit6.conv1.conv.weight" not in keys  # 1 + 4 units
