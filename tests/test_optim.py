"""Learning-rate groups by parameter name."""
from torch import nn

from quantlab.engine.optim import build_optimizer


def test_lr_groups_scale_matching_parameters_and_leave_the_rest():
    model = nn.ModuleDict({"backbone": nn.Linear(2, 2), "head": nn.Linear(2, 1)})
    cfg = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0, "lr_groups": {r"backbone\..*": 0.1}}
    optimizer = build_optimizer(list(model.named_parameters()), cfg, world_size=2, lr_scaling="linear")
    groups = [(g["lr"], len(g["params"])) for g in optimizer.param_groups]
    assert groups == [(2e-5, 2), (2e-4, 2)]
    assert optimizer.param_groups[0]["params"][0] is model["backbone"].weight
