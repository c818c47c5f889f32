"""LINEMOD / ZebraPose pieces against independent truths: the reader against the files
the generator wrote, the loss against its formula worked by hand, ADD(-S) on hand-made
poses, the pixel mapping by hand, the whole inference chain on ground-truth codes, and
the official checkpoint layouts."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from problems.LINEMOD.codes import ids_to_bits
from problems.LINEMOD.dataset import BOP, Instance, Model, read_points
from problems.LINEMOD.evaluation import evaluate
from problems.LINEMOD.generator import generate
from problems.LINEMOD.ZebraPose.loss import LossWeights, object_loss
from problems.LINEMOD.ZebraPose.network import OFFICIAL_ALIASES, ZebraPoseNet
from problems.LINEMOD.ZebraPose.postprocess import correspondences
from problems.LINEMOD.ZebraPose.preprocess import crop, final_box, pad_box
from problems.LINEMOD.ZebraPose.task import ObjectOutput, ZebraPoseTask
from quantlab.errors import CheckpointError, DataError
from tests.conftest import config

TINY = {"width": 128, "height": 96, "bits": 6, "images": {"train_pbr": 8, "test": 6}, "images_per_scene": 4,
        "max_rotation": 45.0, "depth_range": [300.0, 500.0], "margin": 0.25, "occluders": 2, "seed": 3}
TINY_SET = ["data.root=LINEMOD-tiny", *(f"data.synthetic.params.{k}={json.dumps(v)}" for k, v in TINY.items()),
            "network.code_bits=6", "network.blocks=[1, 1, 1, 1]", "input.size=32", "data.crops_per_epoch=16"]


@pytest.fixture(scope="session")
def lm_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm") / "LINEMOD-tiny"
    generate(root, TINY)
    return root


def tiny_task(root: Path, sets: dict | None = None) -> ZebraPoseTask:
    cfg = config("LINEMOD/ZebraPose", "mini")
    cfg["data"]["root"] = root.name
    cfg["network"].update(code_bits=6, blocks=[1, 1, 1, 1])
    cfg["input"]["size"] = 32
    for key, value in (sets or {}).items():
        section, name = key.split(".")
        cfg[section][name] = value
    return ZebraPoseTask(cfg, root.parent)


# ------------------------------------------------------------------------------- the reader

def test_reader_reads_what_the_generator_wrote(lm_root):
    data = BOP(lm_root, ["ape", "eggbox"])
    info = json.loads((lm_root / "models" / "models_info.json").read_text())
    ape, eggbox = data.models[1], data.models[10]
    assert (ape.symmetric, eggbox.symmetric) == (False, True) and "symmetries_discrete" in info["10"]
    assert data.bits == 6 and ape.class_points.shape == (64, 3)
    for model in (ape, eggbox):  # diameter = the largest vertex distance, every vertex kept
        pts = read_points(lm_root / "models" / f"obj_{model.obj_id:06d}.ply")
        assert len(model.points) == len(pts) > 1000
        far = max(np.linalg.norm(pts - p, axis=1).max() for p in pts)
        assert model.diameter == pytest.approx(far)
    expected = 0
    for scene in (0, 1):
        gt_info = json.loads((lm_root / "train_pbr" / f"{scene:06d}" / "scene_gt_info.json").read_text())
        expected += sum(e["visib_fract"] > 0.2 for entries in gt_info.values() for e in entries)
    instances = data.instances("train_pbr", 0.2)
    assert len(instances) == expected > 0
    occluded = 0
    for inst in instances:
        full, visible, ids = data.mask(inst, "mask"), data.mask(inst), data.codes(inst)
        assert not (visible & ~full).any()                       # mask_visib inside mask
        assert not ((ids > 0) & ~full).any()                     # codes only on the object
        assert visible.sum() / full.sum() == pytest.approx(inst.visib_fract)
        rows, cols = np.nonzero(visible)
        assert inst.bbox_visib == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
        occluded += int(full.sum() > visible.sum())
        # each coded pixel sees its class point: projected with the GT pose it lands near the
        # pixel (a class spans a few pixels at 6 bits)
        model = data.models[inst.obj_id]
        rows, cols = np.nonzero(full)
        pts = model.class_points[ids[rows, cols]]
        ok = np.isfinite(pts[:, 0])
        cam = pts[ok] @ inst.R.T + inst.t
        uv = (cam @ inst.K.T)[:, :2] / cam[:, 2:]
        assert np.median(np.linalg.norm(uv - np.stack([cols[ok], rows[ok]], 1), axis=1)) < 3.0
    assert occluded > 0  # the occluders make mask and mask_visib differ


def test_missing_and_malformed_files_are_one_line_errors_naming_them(lm_root, tmp_path):
    root = tmp_path / "lm"
    shutil.copytree(lm_root, root)
    gt_info = root / "test" / "000000" / "scene_gt_info.json"
    gt_info.unlink()
    with pytest.raises(DataError, match=str(gt_info)):
        BOP(root, ["ape"]).instances("test", 0.1)
    info = root / "models" / "models_info.json"
    info.write_text("{not json")
    with pytest.raises(DataError, match=str(info)) as err:
        BOP(root, ["ape"])
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="unknown LINEMOD object"):
        BOP(lm_root, ["teapot"])


def test_jpeg_code_images_are_refused(lm_root, tmp_path):
    root = tmp_path / "lm"
    shutil.copytree(lm_root, root)
    data = BOP(root, ["ape"])
    inst = data.instances("test", 0.1)[0]
    png = root / "test_GT" / "000000" / f"{inst.image:06d}_{inst.gt_index:06d}.png"
    cv2.imwrite(str(png.with_suffix(".jpg")), cv2.imread(str(png)))
    png.unlink()
    with pytest.raises(DataError, match="must be PNG"):
        data.codes(inst)


# --------------------------------------------------------------------------------- the loss

def test_loss_against_its_formula_worked_by_hand():
    # one crop, 2 bits, 1 x 2 pixels; pixel 0 predicted inside the mask, pixel 1 outside
    mask_logit = torch.tensor([[[[2.0, -1.0]]]])
    code_logit = torch.tensor([[[[1.5, 3.0]], [[-0.5, 2.0]]]])
    code_gt = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])
    mask_gt = torch.tensor([[[1.0, 1.0]]])
    hist = torch.full((2,), float("nan"))

    def bce(x, y):
        return max(x, 0) - x * y + math.log1p(math.exp(-abs(x)))
    # inside: bit 0 predicted 1 (right), bit 1 predicted 0 (wrong); rates over (1 pixel + 1)
    rate = [0 / 2, 1 / 2]
    w = [math.exp(3 * min(h, 0.51 - h)) for h in rate]
    # outside the predicted mask the logit is multiplied by 0
    per_bit = [(bce(1.5, 1) + bce(0.0, 0)) / 2, (bce(-0.5, 1) + bce(0.0, 1)) / 2]
    code = sum(wi * bi for wi, bi in zip(w, per_bit)) / sum(w)
    mask = (abs(1 / (1 + math.exp(-2)) - 1) + abs(1 / (1 + math.exp(1)) - 1)) / 2
    terms = object_loss(mask_logit, code_logit, mask_gt, code_gt, hist, True, LossWeights())
    assert float(terms["code"]) == pytest.approx(3 * code, rel=1e-6)
    assert float(terms["mask"]) == pytest.approx(mask, rel=1e-6)
    assert hist.tolist() == rate  # first step: the histogram is the rate itself
    # second step: EMA 0.05 new + 0.95 old, and the weights follow the EMA
    object_loss(mask_logit, code_logit, mask_gt, torch.zeros_like(code_gt), hist, True, LossWeights())
    rate2 = [1 / 2, 0 / 2]  # now bit 0 is wrong and bit 1 right
    assert hist.tolist() == pytest.approx([0.05 * a + 0.95 * b for a, b in zip(rate2, rate)])
    frozen = hist.clone()
    object_loss(mask_logit, code_logit, mask_gt, code_gt, hist, False, LossWeights())
    assert torch.equal(hist, frozen)


def test_histogram_moves_only_in_training_steps(lm_root):
    task = tiny_task(lm_root)
    model = task.build_network()
    batch = task.collate([task.dataset("train", True)[i] for i in range(2)])
    with torch.no_grad():
        task.loss(task.forward(model.train(), batch), batch)     # no gradients: a probe
    task.loss(task.forward(model.eval(), batch), batch)            # eval mode: HAWQ traces
    assert all(torch.isnan(net.code_error_hist).all() for net in model.values())
    task.loss(task.forward(model.train(), batch), batch)
    assert all(torch.isfinite(net.code_error_hist).all() for net in model.values())


# ----------------------------------------------------------------------- metric, inference

def _model(obj_id: int, symmetric: bool) -> Model:
    points = np.array([[50.0, 0, 0], [-50.0, 0, 0], [0, 20.0, 0], [0, -20.0, 0], [0, 0, 10.0]])
    return Model(obj_id, f"o{obj_id}", points, 100.0, symmetric, np.zeros((4, 3)), 2)


def _instance(obj_id: int) -> Instance:
    return Instance("test", 0, 0, 0, obj_id, np.eye(3), np.array([0.0, 0.0, 500.0]), np.eye(3), (0, 0, 1, 1), 1.0)


def test_add_s_uses_adi_for_symmetric_objects_means_over_objects_and_counts_failures():
    flip = np.diag([-1.0, -1.0, 1.0])            # 180 degrees about z: the points map onto each other
    models = {1: _model(1, False), 2: _model(2, True)}
    instances = [_instance(1), _instance(1), _instance(1), _instance(2)]
    t = np.array([0.0, 0.0, 500.0])
    predictions = [{"index": 0, "R": np.eye(3), "t": t + [5.0, 0, 0]},    # ADD 5 mm < 10: right
                   {"index": 1, "R": flip, "t": t},                       # asymmetric: ADD 28 mm: wrong
                   {"index": 2, "R": None, "t": None},                    # PnP failed: a miss
                   {"index": 3, "R": flip, "t": t}]                       # symmetric: ADI 0: right
    m = evaluate(predictions, instances, models).metrics
    assert m["ADD(-S)-0.1d/o1"] == pytest.approx(100 / 3) and m["ADD(-S)-0.1d/o2"] == 100.0
    assert m["ADD(-S)-0.1d/mean"] == pytest.approx((100 / 3 + 100) / 2)    # not 3 of 4 instances
    assert m["ADD-0.1d/o2"] == 0.0 and m["failed/o1"] == 1 and m["count/o1"] == 3


def test_correspondences_map_pixels_through_the_box_with_truncation():
    mask = torch.full((1, 4, 4), -5.0)
    mask[0, 1, 2] = mask[0, 3, 0] = 5.0
    code = torch.full((2, 4, 4), -5.0)
    code[0, 1, 2] = 5.0                             # bits 1,0 -> class 2 (MSB first)
    code[:, 3, 0] = 5.0                             # bits 1,1 -> class 3, a NaN point
    points = np.array([[0, 0, 0], [1, 1, 1], [7.0, 8.0, 9.0], [np.nan] * 3])
    pts, pix = correspondences(mask, code, points, (10, 20, 7, 9))
    # (row 1, col 2): u = int(2 * 7 / 4 + 10) = 13, v = int(1 * 9 / 4 + 20) = 22
    assert pix.tolist() == [[13, 22], [10, 26]] and pts.tolist() == [[7, 8, 9], [0, 0, 0]]


def test_a_logit_whose_float32_sigmoid_is_one_half_is_a_zero_as_in_the_official_test():
    """sigmoid(5e-8) rounds to exactly 0.5 in float32; the official `sigmoid > 0.5` drops
    such a pixel (mask) and reads such a bit as 0, where `logit > 0` kept both."""
    assert torch.sigmoid(torch.tensor(5e-8)) == 0.5
    mask = torch.full((1, 2, 2), -5.0)
    mask[0, 0, 0], mask[0, 1, 1] = 5e-8, 5.0          # the first is not in the mask
    code = torch.full((2, 2, 2), -5.0)
    code[0, 1, 1], code[1, 1, 1] = 5.0, 5e-8           # bits 1, 0 -> class 2
    points = np.array([[0, 0, 0], [1, 1, 1], [7.0, 8.0, 9.0], [4.0, 4.0, 4.0]])
    pts, pix = correspondences(mask, code, points, (0, 0, 2, 2))
    assert pix.tolist() == [[1, 1]] and pts.tolist() == [[7, 8, 9]]


def test_the_square_crop_truncates_its_edges_as_the_official_code():
    """Box (x -3, y 2, w 5, h 8): the square widens x about -0.5 to [-4.5, 3.5], which
    int() truncates to [-4, 3]: 7 wide, one less than its side 8. The image's columns 0-2
    land at canvas columns 4-6 and column 7 stays black, index for index as
    `crop_square_resize`; the PnP box is (-4, 2, 7, 8), as `get_final_Bbox`."""
    image = np.arange(1, 101, dtype=np.int32).reshape(10, 10)
    box = (-3, 2, 5, 8)
    assert final_box(box, "crop_square_resize", image.shape) == (-4, 2, 7, 8)
    expected = np.zeros((8, 8), np.int32)
    expected[:, 4:7] = image[2:10, 0:3]
    assert np.array_equal(crop(image, box, "crop_square_resize", 8, cv2.INTER_NEAREST), expected)
    # edges that are whole numbers or positive are exact: a full square of side 8
    assert final_box((2, 1, 8, 4), "crop_square_resize", image.shape) == (2, -1, 8, 8)
    inside = crop(image, (2, 1, 8, 4), "crop_square_resize", 8, cv2.INTER_NEAREST)
    assert np.array_equal(inside[1:], image[0:7, 2:10]) and not inside[0].any()


def test_ground_truth_codes_give_the_right_poses(lm_root):
    """The inference chain (crop box, ids, class points, pixel mapping, PnP) on the ground
    truth's own code and mask images: nearly every pose is right."""
    task = tiny_task(lm_root, {"input.size": 64})
    data = task.dataset("test", False)
    predictions = []
    for index, inst in enumerate(data.instances):
        item = data[index]
        box, method = pad_box(inst.bbox_visib, task.cfg["input"]["padding"]), task.cfg["input"]["resize"]
        mask = crop(task.data.mask(inst).astype(np.uint8), box, method, 32, cv2.INTER_NEAREST)
        ids = crop(task.data.codes(inst).astype(np.int32), box, method, 32, cv2.INTER_NEAREST)
        code = torch.from_numpy(ids_to_bits(ids, 6).transpose(2, 0, 1).astype(np.float32)) * 20 - 10
        logit = torch.from_numpy(mask.astype(np.float32))[None] * 20 - 10
        outputs = {item["obj"]: ObjectOutput(logit[None], code[None], None)}
        predictions += task.predict(outputs, task.collate([item]))
    metrics, per_image = task.evaluate(predictions, data)
    assert metrics["ADD(-S)-0.5d/mean"] == 100.0 and metrics["ADD(-S)-0.2d/mean"] >= 80.0
    # the bootstrap's scoring at unit weights is the evaluation's
    again = task.resample(per_image, np.ones((1, len(data.instances))))
    assert set(again) <= set(metrics) and all(again[k][0] == metrics[k] for k in again)


# ------------------------------------------------------------------------------ checkpoints

def _official(net: ZebraPoseNet) -> dict:
    """An official-layout file from a network: every key, plus the encoder's aliases."""
    state = {k: v.clone() for k, v in net.state_dict().items() if k != "code_error_hist"}
    for alias, target in OFFICIAL_ALIASES.items():
        state.update({alias + k[len(target):]: v.clone() for k, v in list(state.items()) if k.startswith(target)})
    return {"model_state_dict": state, "optimizer_state_dict": {}, "iteration_step": 1000, "best_score": 0.5}


def test_official_files_load_strictly_one_object_or_a_bundle(lm_root):
    one = tiny_task(lm_root)
    one.cfg["data"]["objects"] = ["ape"]
    target = one.build_network()
    source = ZebraPoseNet(0.125, [1, 1, 1, 1], 6)
    dropped = one.load_weights(target, _official(source), "ape.pth")
    aliases = [k for k in _official(source)["model_state_dict"] if k.startswith("net.resnet.resnet.")]
    assert sorted(next(iter(dropped.values()))) == sorted(f"ape.{k}" for k in aliases)
    for key, value in source.state_dict().items():
        if key != "code_error_hist":
            assert torch.equal(target["ape"].state_dict()[key], value), key
    assert torch.isnan(target["ape"].code_error_hist).all()
    two = tiny_task(lm_root)
    model = two.build_network()
    files = {"ape": _official(source), "eggbox": _official(ZebraPoseNet(0.125, [1, 1, 1, 1], 6))}
    two.load_weights(model, {"objects": files}, "bundle.pt")
    assert torch.equal(model["ape"].net.aspp.conv_1x1_4.weight, source.net.aspp.conv_1x1_4.weight)
    with pytest.raises(CheckpointError, match="one official network"):
        two.load_weights(model, _official(source), "ape.pth")
    with pytest.raises(CheckpointError, match="bundle holds objects"):
        two.load_weights(model, {"objects": {"ape": files["ape"]}}, "bundle.pt")
    bad = _official(source)
    bad["model_state_dict"]["net.aspp.conv_1x1_5.weight"] = bad["model_state_dict"].pop("net.aspp.conv_1x1_4.weight")
    with pytest.raises(CheckpointError, match="conv_1x1_5"):
        one.load_weights(one.build_network(), bad, "ape.pth")


def test_paper_network_groups_reach_the_papers_compression_only_with_transposed_convs(lm_root):
    """T-A6's 4.62x at B8-D4 (zebrapose.md 8): the groups hold every conv weight of the
    width-1 network, the decoder's two ConvTranspose2d included; BN and biases stay at 32
    bits in our accounting (4.607x)."""
    from quantlab.mqat.search import model_size
    from quantlab.quant.editing import pattern_of, quantizable_weights
    task = tiny_task(lm_root)
    task.cfg["data"]["objects"] = ["ape"]
    task.cfg["network"].update(width=1.0, blocks=[3, 4, 6, 3], code_bits=16)
    model = task.build_network()
    layers = quantizable_weights(model, [], task.patterns)
    counts = {m: sum(t.numel() for n, ts in layers.items() if pattern_of(m, task.patterns).fullmatch(n) for t in ts)
              for m in task.groups}
    assert counts == {"backbone": 21_267_648, "decoder": 7_820_608}
    rest = sum(p.numel() for p in model.parameters()) - sum(counts.values())
    assert rest == 24_721
    ratio = model_size({m: 32 for m in counts}, counts, rest) / model_size({"backbone": 8, "decoder": 4}, counts, rest)
    assert ratio == pytest.approx(29_112_977 * 32 / (21_267_648 * 8 + 7_820_608 * 4 + 24_721 * 32))
    assert round(ratio, 2) == 4.61


def test_detections_take_the_best_box_of_the_object_and_a_miss_is_none(tmp_path):
    from problems.LINEMOD.dataset import best_detection, read_detections
    path = tmp_path / "dets.json"
    path.write_text(json.dumps({"2/5": [{"obj_id": 1, "bbox_est": [10.7, 20.2, 30.9, 40.1], "score": 0.4, "time": 0.1},
                                        {"obj_id": 1, "bbox_est": [11.5, 21.5, 31.5, 41.5], "score": 0.9, "time": 0.1},
                                        {"obj_id": 5, "bbox_est": [0, 0, 9, 9], "score": 0.99, "time": 0.1}]}))
    dets = read_detections(path)
    inst = Instance("test", 2, 5, 0, 1, np.eye(3), np.zeros(3), np.eye(3), (0, 0, 1, 1), 1.0)
    assert best_detection(dets, inst) == (11, 21, 31, 41)          # highest score, cast to int
    assert best_detection(dets, dataclasses.replace(inst, obj_id=9)) is None     # no box for it: a miss
    path.write_text(json.dumps({"2/5": [{"obj_id": 1}]}))
    with pytest.raises(DataError, match=str(path)):
        read_detections(path)
