"""Optimizers: learning-rate groups by parameter name, the multi-tensor update."""
import pytest
import torch
from torch import nn

from quantlab.engine.optim import build_optimizer


def test_lr_groups_scale_matching_parameters_and_leave_the_rest():
    model = nn.ModuleDict({"backbone": nn.Linear(2, 2), "head": nn.Linear(2, 1)})
    cfg = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0, "lr_groups": {r"backbone\..*": 0.1}}
    optimizer = build_optimizer(list(model.named_parameters()), cfg, world_size=2, lr_scaling="linear")
    groups = [(g["lr"], len(g["params"])) for g in optimizer.param_groups]
    assert groups == [(2e-5, 2), (2e-4, 2)]
    assert optimizer.param_groups[0]["params"][0] is model["backbone"].weight


def test_rescaled_state_continues_as_a_schedule_built_at_the_new_scale():
    """A 2-rank run's optimizer and warm-up + cosine schedule, rescaled x1/2 after 3
    epochs, give the lrs a 1-rank run has at that epoch and after (independent truth: the
    schedule built at the 1-rank scale from the start)."""
    from quantlab.engine.optim import build_schedule, rescale_lr
    cfg = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "epochs": 10,
           "schedule": {"type": "cosine", "warmup_epochs": 2, "warmup_factor": 0.1, "final_fraction": 0.05}}

    def built(world_size):
        model = nn.ModuleDict({"backbone": nn.Linear(2, 2), "head": nn.Linear(2, 1)})
        optimizer = build_optimizer(list(model.named_parameters()), {**cfg, "lr_groups": {r"backbone\..*": 0.1}},
                                    world_size, "linear")
        return optimizer, build_schedule(optimizer, cfg)

    def step(optimizer, schedule, epochs):
        for _ in range(epochs):
            optimizer.step()
            schedule.step()
        return [g["lr"] for g in optimizer.param_groups]

    two, two_schedule = built(2)
    step(two, two_schedule, 3)
    one, one_schedule = built(1)
    one.load_state_dict(rescale_lr(two.state_dict(), 0.5))
    one_schedule.load_state_dict(rescale_lr(two_schedule.state_dict(), 0.5))
    truth, truth_schedule = built(1)
    assert step(truth, truth_schedule, 3) == pytest.approx([g["lr"] for g in one.param_groups], rel=1e-12)
    for _ in range(6):
        assert step(one, one_schedule, 1) == pytest.approx(step(truth, truth_schedule, 1), rel=1e-12)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_multi_tensor_update_gives_the_per_parameter_loops_values(name):
    # build_optimizer uses foreach=True on the CPU too (speed); it must not change results
    cfg = {"lr": 0.01, "optimizer": name, "momentum": 0.9, "weight_decay": 1e-4}
    runs = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        optimizer = build_optimizer(list(model.named_parameters()), cfg, 1, "none")
        for group in optimizer.param_groups:
            group["foreach"] = foreach
        for _ in range(20):
            optimizer.zero_grad()
            model(torch.randn(4, 6)).pow(2).mean().backward()
            optimizer.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
