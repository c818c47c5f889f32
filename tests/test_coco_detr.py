"""COCO / DETR: the evaluator on hand-made ground truth, the synthetic set read back by the
loader, the official DETR-R50 key layout, and the Hungarian matcher against brute force."""
import itertools
import json

import pytest
import torch
import torchvision
from torchvision.models import resnet
from torchvision.ops import box_convert, generalized_box_iou

from problems.COCO.dataset import CocoDetection, collate
from problems.COCO.evaluation import coco_index, evaluate, table
from problems.COCO.generator import CATEGORIES, generate
from problems.COCO.DETR.loss import SetCriterion, hungarian_match
from problems.COCO.DETR.network import DETR, FrozenBatchNorm2d
from quantlab.engine.checkpoint import load_matching

SYN = {"seed": 3, "image_size": 64, "objects_per_image": [1, 3], "object_scale": [0.2, 0.45],
       "images": {"train": 6, "val": 3}}
SIZES = {"input": {"val_size": 64, "max_size": 64, "train_scales": [48, 64], "crop": False}}


def test_ap_of_a_hand_made_case():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 0},
              {"id": 3, "image_id": 1, "category_id": 2, "bbox": [40, 10, 10, 10], "area": 100, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}, {"id": 3, "name": "unused"}]}
    # disc: hit (0.9), miss (0.8), hit (0.7): precision 1 up to recall 0.5, then 2/3; the
    # 101-point AP is (51 x 1 + 50 x 2/3) / 101 at every IoU threshold (the hits are exact)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [0, 70, 10, 10], "score": 0.8},
            {"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.7}]
    metrics = evaluate(dets, coco_index(gt), critical=[2])
    disc = 100 * (51 + 50 * 2 / 3) / 101
    assert metrics["AP/disc"] == pytest.approx(disc)
    assert metrics["AP/square"] == 0.0 and "AP/unused" not in metrics  # no ground truth: not a category of the mean
    assert metrics["mAP"] == pytest.approx(disc / 2) and metrics["critical_mAP"] == 0.0
    assert metrics["undefined_categories"] == 0
    assert metrics["APm"] == -1.0  # no medium object: COCOeval's -1
    report = table(metrics)
    assert "APm" in report and "-1.0" not in report
    assert report.splitlines()[4] == f"{'APm':<14}{'n/a':>6}   (no ground truth in its range)"


def test_a_category_with_only_crowd_ground_truth_has_no_ap_and_stays_out_of_the_means():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 1}],
          "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "crowd"}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40], "score": 0.8}]
    coco = coco_index(gt)
    metrics = evaluate(dets, coco, critical=[1, 2])
    # COCOeval itself: the crowd-only category's precision is all -1 (undefined)
    from pycocotools.cocoeval import COCOeval
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        check = COCOeval(coco, coco.loadRes(dets), "bbox")
        check.evaluate()
        check.accumulate()
    assert (check.eval["precision"][:, :, 1, 0, -1] == -1).all()
    assert "AP/crowd" not in metrics and metrics["AP/disc"] == pytest.approx(100.0)
    assert metrics["critical_mAP"] == pytest.approx(100.0)  # over disc alone, not (100 + 0) / 2
    assert metrics["critical_categories"] == 1 and metrics["undefined_categories"] == 1


def test_synthetic_set_reads_back_with_boxes_in_place(tmp_path):
    root = tmp_path / "coco"
    generate(root, SYN)
    raw = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert {c["id"] for c in raw["categories"]} == {c["id"] for c in CATEGORIES}
    data = CocoDetection(root, "val", SIZES, train=False)
    sample = data[0]
    anns = [a for a in raw["annotations"] if a["image_id"] == sample["image_id"]]
    x, y, w, h = torch.tensor([a["bbox"] for a in anns]).unbind(1)
    expected = torch.stack([(x + w / 2) / 64, (y + h / 2) / 64, w / 64, h / 64], 1)
    assert torch.allclose(sample["boxes"], expected) and sample["labels"].tolist() == [a["category_id"] for a in anns]
    for a in anns:  # the area is the visible pixel count, inside the box
        assert 0 < a["area"] <= a["bbox"][2] * a["bbox"][3]
    batch = collate([data[0], data[1]])
    assert batch["image"].shape == (2, 3, 64, 64) and not batch["mask"].any()


def official_detr_r50_keys() -> dict[str, tuple]:
    """The official checkpoint's layout, written from formats.md and torchvision's ResNet-50
    (frozen BatchNorm: no num_batches_tracked), independent of our DETR class."""
    keys = {f"backbone.0.body.{k}": tuple(v.shape) for k, v in torchvision.models.resnet50().state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    d, ffn = 256, 2048
    attn = {"in_proj_weight": (3 * d, d), "in_proj_bias": (3 * d,), "out_proj.weight": (d, d), "out_proj.bias": (d,)}
    common = {"linear1.weight": (ffn, d), "linear1.bias": (ffn,), "linear2.weight": (d, ffn), "linear2.bias": (d,)}
    for i in range(6):
        layer = {**{f"self_attn.{k}": v for k, v in attn.items()}, **common}
        norms = {f"norm{n}.{p}": (d,) for n in (1, 2) for p in ("weight", "bias")}
        keys.update({f"transformer.encoder.layers.{i}.{k}": v for k, v in {**layer, **norms}.items()})
        dec = {**layer, **{f"multihead_attn.{k}": v for k, v in attn.items()},
               **{f"norm{n}.{p}": (d,) for n in (1, 2, 3) for p in ("weight", "bias")}}
        keys.update({f"transformer.decoder.layers.{i}.{k}": v for k, v in dec.items()})
    keys.update({"transformer.decoder.norm.weight": (d,), "transformer.decoder.norm.bias": (d,),
                 "input_proj.weight": (d, 2048, 1, 1), "input_proj.bias": (d,), "query_embed.weight": (100, d),
                 "class_embed.weight": (92, d), "class_embed.bias": (92,)})
    for i, (a, b) in enumerate([(d, d), (d, d), (4, d)]):
        keys.update({f"bbox_embed.layers.{i}.weight": (a, b), f"bbox_embed.layers.{i}.bias": (a,)})
    return keys


def test_the_official_detr_r50_layout_loads_strictly():
    layout = official_detr_r50_keys()
    model = DETR()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    torch.manual_seed(1)
    state = {k: torch.randn(shape) for k, shape in layout.items()}
    load_matching(model, state, "detr-r50.pth")
    assert torch.equal(model.state_dict()["query_embed.weight"], state["query_embed.weight"])


def test_an_official_training_checkpoint_with_its_args_loads_and_other_objects_are_refused(tmp_path):
    """DETR's main.py saves {model, optimizer, lr_scheduler, epoch, args: argparse.Namespace};
    weights-only loading accepts that one known class and nothing else."""
    import argparse
    from problems.COCO.DETR import build_task
    from quantlab.engine.checkpoint import read_weights
    from quantlab.errors import CheckpointError
    from tests.conftest import config
    task = build_task(config("COCO/DETR"), tmp_path)
    source = task.build_network()
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": source.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {"step_size": 200}, "epoch": 299,
                "args": argparse.Namespace(lr=1e-4, backbone="resnet50", dilation=False)}, path)
    target = task.build_network()
    assert read_weights(target, path, task) == ([], [])
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    import fractions
    torch.save({"model": source.state_dict(), "args": fractions.Fraction(1, 3)}, path)  # any other class
    with pytest.raises(CheckpointError, match="weights-only"):
        read_weights(task.build_network(), path, task)


def test_box_terms_are_normalised_by_the_box_count_averaged_over_ranks(tmp_path):
    """DETR's criterion all-reduces the batch's box count and divides by the world size
    (at least 1): with 1 box here and 3 on the other rank, the box terms are sums / 2."""
    from problems.COCO.DETR import build_task
    from tests.conftest import config
    cfg = config("COCO/DETR")
    task = build_task(cfg, tmp_path)
    torch.manual_seed(0)
    queries, classes = cfg["network"]["queries"], cfg["network"]["num_classes"] + 1
    outputs = {"pred_logits": torch.randn(1, queries, classes), "pred_boxes": torch.rand(1, queries, 4) * 0.5 + 0.25}
    batch = {"labels": [torch.tensor([3])], "boxes": [torch.tensor([[0.5, 0.5, 0.2, 0.2]])]}
    seen = []

    def across(value, name):
        seen.append((name, value))
        return (value + 3.0) / 2
    averaged = task.loss(outputs, batch, across=across)
    local = task.loss(outputs, batch)
    criterion = SetCriterion(cfg["network"]["num_classes"], cfg["loss"]["eos_coef"],
                             {"ce": cfg["loss"]["ce"], "bbox": cfg["loss"]["bbox"], "giou": cfg["loss"]["giou"]})
    truth = criterion(outputs, [{"labels": batch["labels"][0], "boxes": batch["boxes"][0]}], 2.0)
    assert seen == [("detr.num_boxes", 1.0)] == list(task.loss_counts(batch).items())  # what the trainer sends ahead
    for term in ("bbox", "giou", "ce"):
        assert torch.allclose(averaged[term], truth[term])
    assert torch.allclose(averaged["bbox"] * 2, local["bbox"]) and torch.allclose(averaged["ce"], local["ce"])


def test_matcher_is_the_brute_force_optimum():
    torch.manual_seed(0)
    for _ in range(25):
        q, n = 5, int(torch.randint(1, 5, ()))
        logits, boxes = torch.randn(1, q, 4), torch.rand(1, q, 4) * 0.5 + 0.25
        target = {"labels": torch.randint(0, 3, (n,)), "boxes": torch.rand(n, 4) * 0.5 + 0.25}
        (rows, cols), = hungarian_match(logits, boxes, [target])
        xyxy = lambda b: box_convert(b, "cxcywh", "xyxy")
        cost = (5 * torch.cdist(boxes[0], target["boxes"], p=1) - logits[0].softmax(-1)[:, target["labels"]]
                - 2 * generalized_box_iou(xyxy(boxes[0]), xyxy(target["boxes"])))
        best = min(sum(float(cost[p[j], j]) for j in range(n)) for p in itertools.permutations(range(q), n))
        assert float(cost[rows, cols].sum()) == pytest.approx(best, abs=1e-5)
        assert sorted(cols.tolist()) == list(range(n))


def test_set_criterion_is_zero_box_loss_for_perfect_boxes():
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    logits = torch.tensor([[[0.0, 20.0, 0.0, 0.0], [0.0, 0.0, 0.0, 20.0]]])  # query 0 says class 1, query 1 no-object
    terms = SetCriterion(3)({"pred_logits": logits, "pred_boxes": boxes}, [target], 1.0)
    assert float(terms["bbox"]) == 0.0 and float(terms["giou"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["ce"]) < 1e-6


def test_the_stem_is_frozen_as_in_detr_unless_trained_from_scratch():
    frozen = DETR("small", [1, 1, 1, 1], hidden=32, heads=2, encoder_layers=1, decoder_layers=1, ffn=32)
    scratch = DETR("small", [1, 1, 1, 1], hidden=32, heads=2, encoder_layers=1, decoder_layers=1, ffn=32,
                   freeze_stem=False)
    stem = "backbone.0.body.conv1.weight"
    assert not dict(frozen.named_parameters())[stem].requires_grad
    assert dict(scratch.named_parameters())[stem].requires_grad
    assert dict(frozen.named_parameters())["backbone.0.body.layer2.0.conv1.weight"].requires_grad


def test_the_small_backbone_at_width_64_is_torchvisions_basicblock_resnet():
    ours = DETR("small", [2, 1, 1, 1], hidden=32, heads=2, encoder_layers=1, decoder_layers=1, ffn=32)
    theirs = resnet.ResNet(resnet.BasicBlock, [2, 1, 1, 1], norm_layer=FrozenBatchNorm2d).state_dict()
    body = {k[len("backbone.0.body."):]: v.shape for k, v in ours.state_dict().items() if k.startswith("backbone.0.body.")}
    assert body == {k: v.shape for k, v in theirs.items() if not k.startswith("fc.")}


def test_the_small_backbone_width_and_batch_norm():
    model = DETR("small", [1, 1, 1, 1], dilation=True, hidden=32, heads=2, encoder_layers=1, decoder_layers=1,
                 ffn=32, width=16, norm="batch")
    assert model.input_proj.in_channels == 128
    assert isinstance(model.backbone[0].body.bn1, torch.nn.BatchNorm2d)
    features, _ = model.backbone[0](torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    assert features.shape == (1, 128, 4, 4)  # stride 16 with the last stage dilated
    with pytest.raises(ValueError, match="network.norm"):
        DETR("small", [1, 1, 1, 1], norm="group")
