"""Fisher traces against a direct per-sample computation; the distillation loss."""
from pathlib import Path

import pytest
import torch
from torch import nn

from problems.COCO.DETR.distillation import distillation_loss
from quantlab.quant.regularizers import fisher_penalty
from quantlab.sensitivity.fisher import fisher_traces


def test_fisher_trace_is_the_mean_squared_per_sample_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    xs, ys = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    w0, w2 = model[0].weight, model[2].weight

    def loss(i):
        return lambda: ((model(xs[i:i + 1]) - ys[i:i + 1]) ** 2).sum()
    traces = fisher_traces({"0": w0, "2": w2}, [loss(i) for i in range(5)])
    # direct: the last layer's gradient of (y_hat - y)^2 is 2 (y_hat - y) h, h = tanh(W0 x + b0)
    direct = 0.0
    with torch.no_grad():
        for i in range(5):
            h = torch.tanh(model[0](xs[i]))
            residual = model[2](h) - ys[i]
            direct += float(((2 * residual * h) ** 2).sum())
    assert traces["2"] == pytest.approx(direct / 5, rel=1e-10)
    # the differentiable penalty of one sample equals that sample's trace
    one = fisher_traces({"0": w0, "2": w2}, [loss(0)])
    assert float(fisher_penalty([w0, w2], loss(0)()).detach()) == pytest.approx(one["0"] + one["2"], rel=1e-10)


def outputs(logits, boxes):
    return {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": l, "pred_boxes": b} for l, b in zip(logits[:-1], boxes[:-1])]}


def test_distillation_is_zero_for_identical_outputs_and_positive_otherwise():
    torch.manual_seed(0)
    logits, boxes = torch.randn(3, 2, 5, 4), torch.rand(3, 2, 5, 4)
    teacher = outputs(logits, boxes)
    assert float(distillation_loss(outputs(logits.clone(), boxes.clone()), teacher)) == pytest.approx(0.0, abs=1e-7)
    moved = boxes.clone()
    moved[0, 0, 0, 0] += 0.5  # one box coordinate of one auxiliary layer: L1 = 0.5 / (2 x 5 queries)
    assert float(distillation_loss(outputs(logits, moved), teacher)) == pytest.approx(0.05)
    assert float(distillation_loss(outputs(logits + torch.randn_like(logits), boxes), teacher)) > 0


@pytest.mark.parametrize("override, key", [("fisher.schemes=[uniform, hessian]", "fisher.schemes"),
                                           ("fisher.target=2", "fisher.target"),
                                           ("fisher.regularizers=[0.0, -0.1]", "fisher.regularizers")])
def test_fisher_mode_settings_are_checked(override, key):
    from problems.COCO.DETR import build_task
    from quantlab.errors import ConfigError
    from quantlab.modes.fisher import check
    from tests.conftest import config

    def settings(*overrides):
        cfg = config("COCO/DETR", "mini", overrides)
        check(build_task(cfg, Path("unused")), cfg["fisher"], cfg["ptq"]["ranges"])
    settings()
    with pytest.raises(ConfigError, match=key):
        settings(override)
