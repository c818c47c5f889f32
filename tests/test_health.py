"""A model is checked before it is saved: weights and one forward pass must be finite."""
import torch
from torch import nn

from quantlab.engine.health import all_finite, diverged


def test_huge_but_finite_weights_whose_outputs_overflow_are_caught():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.fill_(1e20)  # finite in float32 (max 3.4e38); 4 x 4e20 x 1e19 is not
        model[1].weight.fill_(1e19)
    x = torch.ones(1, 4)
    assert torch.isfinite(model[0](x)).all() and not torch.isfinite(model(x)).all()
    why = diverged(model, lambda m: {"out": [m(x)]})
    assert why == "its outputs on an evaluation sample are not finite (largest weight 1e+20 in '0.weight')"
    assert model.training  # the mode is restored


def test_a_non_finite_parameter_is_named_and_a_sound_model_passes():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    x = torch.ones(1, 2)
    assert diverged(model, lambda m: m(x)) is None
    with torch.no_grad():
        model[1].bias.fill_(float("nan"))
    assert diverged(model, lambda m: m(x)) == "parameter '1.bias' is not finite"


def test_integer_outputs_and_nested_containers():
    assert all_finite({"a": (torch.tensor([1, 2]), [torch.ones(2)]), "b": "label"})
    assert not all_finite([torch.tensor([0.0, float("inf")])])
