"""The INQ controller: schedule, optimizer-state clearing, save and resume."""
import copy

import pytest
import torch
from torch import nn

from quantlab.quant.algorithms.inq import INQController
from quantlab.quant.editing import Rule, apply_recipe

SCHEDULE = {0: 0.2, 2: 0.6, 4: 1.0}


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    apply_recipe(model, [Rule(r"\d", "inq", 3)], {})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    return model, opt, INQController(model, SCHEDULE)


def train(model, opt, ctrl, epochs, data):
    for epoch in epochs:
        ctrl.on_epoch_start(epoch)
        for x in data:
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            ctrl.after_step(opt)


def test_fractions_follow_the_schedule_and_momentum_of_frozen_entries_is_cleared():
    model, opt, ctrl = make()
    data = [torch.randn(3, 2, 8, 8) for _ in range(2)]
    expected = {0: 0.2, 1: 0.2, 2: 0.6, 3: 0.6, 4: 1.0}
    for epoch in range(5):
        train(model, opt, ctrl, [epoch], data)
        for layer in ctrl.layers:
            assert layer.wq.fraction() == pytest.approx(expected[epoch], abs=1 / layer.weight.numel())
            buf = opt.state[layer.weight]["momentum_buffer"]
            assert (buf[layer.wq.frozen()] == 0).all()


def test_resume_mid_schedule_continues_exactly():
    data = [torch.randn(3, 2, 8, 8) for _ in range(2)]
    model, opt, ctrl = make()
    train(model, opt, ctrl, range(5), data)
    # interrupted after epoch 2, restored into fresh objects, continued
    model2, opt2, ctrl2 = make()
    train(model2, opt2, ctrl2, range(3), data)
    saved = copy.deepcopy((model2.state_dict(), opt2.state_dict(), ctrl2.state_dict()))
    model3, opt3, ctrl3 = make()
    model3.load_state_dict(saved[0])
    opt3.load_state_dict(saved[1])
    ctrl3.load_state_dict(saved[2])
    train(model3, opt3, ctrl3, range(3, 5), data)
    for key, value in model.state_dict().items():
        assert torch.allclose(value, model3.state_dict()[key], equal_nan=True), key
