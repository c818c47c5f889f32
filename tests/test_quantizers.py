"""Quantizer functions against values worked by hand and the papers' formulas."""
import pytest
import torch

from quantlab.quant.quantizers import (inq_levels, inq_quantize, inq_scale, lsq, lsq_init_step, lsq_range, max_abs,
                                       round_ste, sign_binary, symmetric_linear)


def test_symmetric_linear_by_hand():
    w = torch.tensor([0.4, -1.0, 0.26, 0.74])
    # 2 bits: 2^(2-1) - 1 = 1 level each side, scale max|W| / 1 = 1
    assert symmetric_linear(w, 2).tolist() == [0.0, -1.0, 0.0, 1.0]
    # 3 bits: 3 levels each side, scale 1/3: W * 3 = [1.2, -3, 0.78, 2.22] -> [1, -3, 1, 2]
    assert torch.allclose(symmetric_linear(w, 3), torch.tensor([1.0, -3.0, 1.0, 2.0]) / 3)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_symmetric_linear_uses_2_to_the_b_minus_1_levels(bits):
    w = torch.linspace(-1, 1, 2001)
    assert len(torch.unique(symmetric_linear(w, bits))) == 2 ** bits - 1


def test_symmetric_per_channel_scales_each_output_channel():
    w = torch.tensor([[0.5, -0.2], [4.0, 1.1]])
    q = symmetric_linear(w, 2, per_channel=True)
    assert q.tolist() == [[0.5, 0.0], [4.0, 0.0]]  # row 0 scale 0.5, row 1 scale 4
    assert symmetric_linear(w, 2).tolist() == [[0.0, 0.0], [4.0, 0.0]]  # one scale: 4


def test_rounding_passes_gradients_straight_through():
    w = torch.tensor([0.3, -0.7, 0.9], requires_grad=True)
    symmetric_linear(w, 4).sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 1.0]
    x = torch.tensor([1.4], requires_grad=True)
    round_ste(x).backward()
    assert x.grad.item() == 1.0


def test_sign_binary_by_hand():
    w = torch.tensor([0.5, -1.5, 2.0, -0.0])
    # mean|W| = 1.0; sign(0) taken as +1
    assert sign_binary(w).tolist() == [1.0, -1.0, 1.0, 1.0]


def test_lsq_ranges_and_init():
    assert lsq_range(4, signed=True) == (8, 7)
    assert lsq_range(4, signed=False) == (0, 15)
    x = torch.tensor([1.0, -3.0, 2.0, -2.0])
    assert lsq_init_step(x, 4).item() == pytest.approx(2 * 2.0 / 2)


def test_lsq_forward_and_gradients_match_the_papers_formulas():
    q_neg, q_pos = lsq_range(3, signed=True)  # -4 .. 3
    x = torch.tensor([0.26, -0.55, 2.0, -3.0, 0.74], requires_grad=True)
    s = torch.tensor([0.5], requires_grad=True)
    out = lsq(x, s, q_neg, q_pos)
    # x / s = [0.52, -1.1, 4, -6, 1.48]
    assert out.tolist() == pytest.approx([0.5, -0.5, 1.5, -2.0, 0.5])
    out.sum().backward()
    # dQ/dx: 1 inside (-Q_N, Q_P), 0 where clipped
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    # dQ/ds = -v + round(v) inside, -Q_N / Q_P when clipped, times g = 1/sqrt(N Q_P)
    inside = torch.tensor([-0.52 + 1, 1.1 - 1, 0, 0, -1.48 + 1])
    clipped = torch.tensor([0.0, 0.0, q_pos, -q_neg, 0.0])
    expected = (inside + clipped).sum() / (5 * q_pos) ** 0.5
    assert s.grad.item() == pytest.approx(expected.item(), rel=1e-5)


def lsq_composed(x, s, q_neg, q_pos):
    """A second LSQ, composed from autograd primitives as the paper writes it."""
    g = 1.0 / (x.numel() / s.numel() * q_pos) ** 0.5
    s = (s - s * g).detach() + s * g
    v = torch.clamp(x / s, -q_neg, q_pos)
    return (v + (torch.round(v) - v).detach()) * s


@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_lsq_equals_the_composed_formula(per_channel):
    torch.manual_seed(1)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    s0 = torch.rand(6, 1, 1, 1, dtype=torch.float64) * 0.3 + 0.1 if per_channel else torch.tensor([0.2], dtype=torch.float64)
    grads = []
    for fn in (lsq, lsq_composed):
        s = s0.clone().requires_grad_(True)
        out = fn(x, s, 4, 3)
        torch.manual_seed(2)  # the same upstream gradient for both
        (out * torch.randn_like(out)).sum().backward()
        grads.append((out.detach(), x.grad.clone(), s.grad.clone()))
        x.grad = None
    for ours, theirs in zip(*grads):
        assert torch.allclose(ours, theirs, atol=1e-12)


def test_inq_levels_as_in_the_mqat_code():
    assert inq_levels(0.3, 2).tolist() == pytest.approx([-0.3, 0.0, 0.3])  # ternary
    assert len(inq_levels(1.0, 4)) == 15 and len(inq_levels(1.0, 5)) == 31 and len(inq_levels(1.0, 8)) == 255
    assert inq_quantize(torch.tensor([0.2, 0.6, -0.9, 5.0]), 1.0, 2).tolist() == [0.0, 1.0, -1.0, 1.0]


def reference_inq_scale(w: torch.Tensor, bits: int) -> float:
    """The MQAT reference code's search, written out as it is (inq_ops.py): the L2 norm of
    each weight's distance to its nearest level, by a loop over the levels, minimised by
    SciPy's brute force over 1000 points of [1e-6, max|W|] and then fmin."""
    from scipy.optimize import brute, fmin
    weight = w.flatten()

    def loss(s):
        levels = torch.linspace(-s.item(), s.item(), steps=2 ** bits - 1).to(weight)
        nearest = torch.full_like(weight, float("inf"))
        for level in levels:
            nearest = torch.min(nearest, (weight - level).abs())
        return nearest.norm(p=2).item()
    return float(brute(loss, ranges=((1e-6, weight.abs().max().item()),), Ns=1000, finish=fmin, disp=False)[0])


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_inq_scale_matches_the_reference_search_on_small_layers(bits):
    """A 10-weight layer, where a coarse grid misses the minimum (it cost +5% L2 error)."""
    for seed in range(12):
        torch.manual_seed(seed)
        w = torch.randn(10) * 0.1
        ours, theirs = float(inq_scale(w, bits)), reference_inq_scale(w, bits)
        error = float(((inq_quantize(w, ours, bits) - w) ** 2).sum())
        reference = float(((inq_quantize(w, theirs, bits) - w) ** 2).sum())
        assert error <= reference * (1 + 1e-5) + 1e-12, (seed, ours, theirs)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_inq_scale_is_as_good_as_brute_force(bits):
    torch.manual_seed(bits)
    w = torch.randn(500) * 0.1
    s = inq_scale(w, bits)
    error = ((inq_quantize(w, s, bits) - w) ** 2).sum()
    brute = min(((inq_quantize(w, c, bits) - w) ** 2).sum() for c in torch.linspace(1e-4, w.abs().max(), 4000))
    assert error <= brute * (1 + 1e-3)


def test_lsq_clips_where_pytorchs_fused_learnable_op_lets_the_gradient_through():
    # PyTorch's fused LSQ rounds first and tests the rounded value against the range, so
    # v in (Q_P, Q_P + 0.5) counts as inside; the LSQ paper (ours) clips v first: there the
    # x gradient is 0 and the step gradient is Q_P, not round(v) - v. Elsewhere they agree.
    q_neg, q_pos = lsq_range(4, signed=True)  # -8 .. 7
    s = 0.5
    v = torch.tensor([0.3, -2.6, 7.2, 7.4, -8.3, 9.0, -9.1])  # 7.2, 7.4 and -8.3 lie in the disputed bands
    g = 1.0 / (v.numel() * q_pos) ** 0.5
    ours_x, fused_x = (v * s).requires_grad_(), (v * s).requires_grad_()
    ours_s, fused_s = torch.tensor([s], requires_grad=True), torch.tensor([s], requires_grad=True)
    ours = lsq(ours_x, ours_s, q_neg, q_pos)
    fused = torch._fake_quantize_learnable_per_tensor_affine(fused_x, fused_s, torch.zeros(1), -q_neg, q_pos,
                                                             g)
    assert torch.allclose(ours, fused)  # forward: round(clip(v)) = clip(round(v)) for integer bounds
    ours.sum().backward()
    fused.sum().backward()
    assert ours_x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert fused_x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    # step gradients by hand: inside round(v) - v; clipped -Q_N or Q_P
    per_element = [0.0 - 0.3, -3.0 + 2.6, 7.0, 7.0, -8.0, 7.0, -8.0]
    fused_element = [0.0 - 0.3, -3.0 + 2.6, 7.0 - 7.2, 7.0 - 7.4, -8.0 + 8.3, 7.0, -8.0]
    assert ours_s.grad.item() == pytest.approx(g * sum(per_element), rel=1e-5)
    assert fused_s.grad.item() == pytest.approx(g * sum(fused_element), rel=1e-5)


def test_lsq_step_gradient_matches_a_float64_computation_of_the_formula():
    # the step gradient sums many terms of both signs: summed as one product it stays
    # within float32's reach of the exact value (two separate sums would cancel)
    torch.manual_seed(3)
    q_neg, q_pos = lsq_range(8, signed=True)
    x = (torch.randn(4, 8, 32, 32) * 3).requires_grad_()
    s = torch.tensor([0.05], requires_grad=True)
    grad = torch.randn_like(x)
    lsq(x, s, q_neg, q_pos).backward(grad)
    v = (x.detach() / s.detach()).double()  # float32's v: what is left to compare is the summation
    inside = ((v >= -q_neg) & (v <= q_pos)).double()
    slope = v.round().clamp(-q_neg, q_pos) - v * inside
    exact = (grad.double() * slope).sum().item() / (x.numel() * q_pos) ** 0.5
    assert s.grad.item() == pytest.approx(exact, rel=2e-6)


@pytest.mark.parametrize("shape,per_channel,axis", [((8, 4, 3, 3), False, 0), ((8, 4, 3, 3), True, 0),
                                                    ((8, 4, 3, 3), True, 1), ((6, 5), True, 0), ((7,), False, 0),
                                                    ((7,), True, 0)])
def test_max_abs_is_the_max_of_the_absolute_values_on_every_layout(shape, per_channel, axis):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    w.view(-1)[3] = -10.0  # the extreme is negative in one channel
    if per_channel and w.dim() > 1:
        others = tuple(d for d in range(w.dim()) if d != axis)
        expected = w.abs().amax(dim=others, keepdim=True)
    else:
        expected = w.abs() if per_channel else w.abs().amax()
    got = max_abs(w, per_channel, axis)
    assert got.shape == expected.shape and torch.equal(got, expected)
    assert torch.equal(max_abs(w.transpose(0, -1), per_channel, axis),
                       max_abs(w.transpose(0, -1).contiguous(), per_channel, axis))
