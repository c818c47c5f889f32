"""The critical-category fold on hand-made logits."""
import math

import torch

from problems.COCO.DETR.critical import fold_labels, fold_logits


def test_fold_keeps_critical_logits_and_sums_the_rest_into_other():
    # classes 0..3 and no-object; critical: 2 then 0
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5, -1.0]])
    folded = fold_logits(logits, [2, 0])
    assert folded.shape == (1, 4)
    assert folded[0, 0] == 3.0 and folded[0, 1] == 1.0 and folded[0, 3] == -1.0
    assert math.isclose(float(folded[0, 2]), math.log(math.exp(2.0) + math.exp(0.5)), rel_tol=1e-6)
    p, q = logits.softmax(-1)[0], folded.softmax(-1)[0]
    assert torch.allclose(q, torch.stack([p[2], p[0], p[1] + p[3], p[4]]))


def test_fold_without_a_no_object_column():
    folded = fold_logits(torch.tensor([0.0, 0.0, 0.0]), [1], no_object=False)
    assert torch.allclose(folded, torch.tensor([0.0, math.log(2.0)]))


def test_labels_follow_the_same_map():
    labels = torch.tensor([0, 1, 2, 3, 4])  # 4 = no-object of a 4-class head
    assert fold_labels(labels, [2, 0], num_classes=4).tolist() == [1, 2, 0, 2, 3]
