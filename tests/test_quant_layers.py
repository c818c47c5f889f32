"""Quantized layers keep float weights; INQ freezing; calibrated STE activations."""
import pytest
import torch
from torch import nn

from quantlab.quant.algorithms.inq import INQWeight
from quantlab.quant.algorithms.lsq import LSQActivation, LSQWeight
from quantlab.quant.algorithms.ste import STEActivation
from quantlab.quant.algorithms.symmetric import SymmetricWeight
from quantlab.quant.layers import QuantConv2d, QuantLinear, QuantMultiheadAttention, weights_quantized_once
from quantlab.quant.quantizers import inq_quantize


def test_quantized_conv_keeps_the_float_weights_and_equals_a_conv_with_quantized_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    q = QuantConv2d.from_float(conv, SymmetricWeight(4))
    assert torch.equal(q.weight, conv.weight) and torch.equal(q.bias, conv.bias)
    x = torch.randn(2, 3, 8, 8)
    ref = nn.functional.conv2d(x, SymmetricWeight(4)(conv.weight), conv.bias, padding=1)
    assert torch.allclose(q(x), ref)
    assert len(torch.unique(SymmetricWeight(4)(q.weight).detach())) <= 15


def _lsq_value(v: float, q_neg: int, q_pos: int) -> float:
    """round(clip(v, -Q_N, Q_P)) for one number (no ties occur in the tests' values)."""
    return float(round(min(max(v, -q_neg), q_pos)))


def _lsq_slope(v: float, q_neg: int, q_pos: int) -> float:
    """Esser et al. 2020, eq. 3: d(v_hat)/ds in units of s, for v = x / s: -v + round(v)
    inside the range, -Q_N below it, Q_P above it."""
    return -q_neg if v <= -q_neg else q_pos if v >= q_pos else -v + round(v)


def test_quantized_linear_with_lsq_weights_and_activations_has_the_lsq_paper_gradients():
    """The gradients of a QuantLinear with LSQ weights and activations, against the LSQ
    paper worked out here element by element in plain Python: the steps' gradients by
    eq. 3 scaled by g = 1 / sqrt(N Q_P) (N: elements per step), the weight's and input's
    straight through inside the range and zero where clipped. The values put entries
    inside, above and below the 4-bit signed range [-8, 7] of both quantizers."""
    q_neg, q_pos = 8, 7
    w = [[0.3, -0.8, 4.2], [-5.1, 1.1, 0.05]]     # / 0.5: 0.6 -1.6 8.4 | -10.2 2.2 0.1
    x = [[0.1, 2.5, -0.3], [-3.0, 0.6, 1.0], [0.45, -0.05, 1.8], [0.2, -1.2, 0.7]]  # / 0.25
    c = [[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0], [2.0, 0.25]]  # dL/dy: L = sum(c * y)
    s_w, s_a = 0.5, 0.25
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w)), lin.bias.copy_(torch.tensor([0.2, -0.1]))
    q = QuantLinear.from_float(lin, LSQWeight(lin.weight, 4), LSQActivation(4, signed=True))
    assert float(q.wq.step.detach()) == pytest.approx(2 * (sum(map(abs, w[0] + w[1])) / 6) / 7 ** 0.5)  # LSQ's init
    inputs = torch.tensor(x, requires_grad=True)
    calibrating = q(inputs).detach()  # the input passes unquantized while the step calibrates
    assert torch.equal(calibrating, nn.functional.linear(inputs, q.wq(q.weight), q.bias).detach())
    q.aq.end_calibration(q.aq.calibration_statistic())
    assert float(q.aq.step.detach()) == pytest.approx(2 * (sum(abs(v) for row in x for v in row) / 12) / 7 ** 0.5)
    with torch.no_grad():
        q.wq.step.fill_(s_w), q.aq.step.fill_(s_a)
    out = q(inputs)
    (out * torch.tensor(c)).sum().backward()

    wq = [[_lsq_value(v / s_w, q_neg, q_pos) * s_w for v in row] for row in w]
    xq = [[_lsq_value(v / s_a, q_neg, q_pos) * s_a for v in row] for row in x]
    y = [[sum(xq[n][j] * wq[i][j] for j in range(3)) + (0.2, -0.1)[i] for i in range(2)] for n in range(4)]
    d_wq = [[sum(c[n][i] * xq[n][j] for n in range(4)) for j in range(3)] for i in range(2)]
    d_xq = [[sum(c[n][i] * wq[i][j] for i in range(2)) for j in range(3)] for n in range(4)]
    g_w, g_a = 1 / (6 * q_pos) ** 0.5, 1 / (12 * q_pos) ** 0.5
    grad_s_w = g_w * sum(d_wq[i][j] * _lsq_slope(w[i][j] / s_w, q_neg, q_pos) for i in range(2) for j in range(3))
    grad_s_a = g_a * sum(d_xq[n][j] * _lsq_slope(x[n][j] / s_a, q_neg, q_pos) for n in range(4) for j in range(3))

    def through(grad: list[list[float]], values: list[list[float]], step: float) -> list[list[float]]:
        return [[g if -q_neg < v / step < q_pos else 0.0 for g, v in zip(gs, vs)] for gs, vs in zip(grad, values)]

    assert out.tolist() == [pytest.approx(row, abs=1e-6) for row in y]
    assert float(q.wq.step.grad) == pytest.approx(grad_s_w, abs=1e-6)
    assert float(q.aq.step.grad) == pytest.approx(grad_s_a, abs=1e-6)
    assert q.weight.grad.tolist() == [pytest.approx(row, abs=1e-6) for row in through(d_wq, w, s_w)]
    assert inputs.grad.tolist() == [pytest.approx(row, abs=1e-6) for row in through(d_xq, x, s_a)]
    assert q.bias.grad.tolist() == pytest.approx([sum(row[i] for row in c) for i in range(2)])
    assert 0 in q.weight.grad.flatten().tolist() and 0 in inputs.grad.flatten().tolist()  # clipping did occur
    assert set(q.state_dict()) == {"weight", "bias", "wq.step", "aq.step", "aq.calibrating",
                                   "aq.abs_mean_sum", "aq.batches"}


def test_lsq_activation_step_starts_at_twice_the_mean_abs_over_sqrt_qp():
    act = LSQActivation(bits=3, signed=False)  # Q_P = 7
    a, b = torch.tensor([1.0, -3.0]), torch.tensor([2.0, 2.0, 8.0, 0.0])
    assert torch.equal(act(a), a) and torch.equal(act(b), b)   # calibration passes through
    # mean|x| per batch: 2 and 3 -> 2.5; step = 2 * 2.5 / sqrt(7)
    assert float(act.calibration_statistic()) == pytest.approx(2.5)
    act.end_calibration(act.calibration_statistic())
    step = 5.0 / 7 ** 0.5
    assert float(act.step.detach()) == pytest.approx(step)
    out = act(torch.tensor([0.4 * step, 0.6 * step, -1.0, 100.0]))
    assert out.tolist() == pytest.approx([0.0, step, 0.0, 7 * step])


def test_inq_freezes_the_reference_codes_count_at_every_step():
    """The reference freezes int(fraction x n) entries (a floor): with the paper's schedule
    on layers of 37 and 150 weights, rounding would be one entry off at several steps."""
    schedule = [0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.9875, 1.0]
    differs = 0
    for n in (37, 150):
        torch.manual_seed(n)
        weight = torch.randn(n, 1)
        inq = INQWeight(weight, bits=2)
        for fraction in schedule:
            inq.freeze(weight, fraction)
            assert int(inq.frozen().sum()) == int(fraction * n), (n, fraction)
            differs += int(fraction * n) != round(fraction * n)
    assert differs >= 3  # the cases this test is about do occur


def test_inq_frozen_fraction_follows_the_schedule_and_frozen_weights_never_change():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3)
    inq = INQWeight(conv.weight, bits=2)
    layer = QuantConv2d.from_float(conv, inq)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    previous = None
    for fraction in (0.2, 0.4, 0.6, 0.8, 0.9, 1.0):
        new = inq.freeze(layer.weight, fraction)
        assert inq.fraction() == pytest.approx(fraction, abs=1 / conv.weight.numel())
        # the newly frozen entries are the largest-magnitude trainable ones
        if new.any() and (~inq.frozen()).any():
            assert layer.weight.detach().abs()[new].min() >= layer.weight.detach().abs()[~inq.frozen()].max()
        frozen_now = inq.weight_frozen.clone()
        for _ in range(3):
            opt.zero_grad()
            layer(torch.randn(2, 4, 6, 6)).pow(2).sum().backward()
            opt.step()
        effective = inq(layer.weight).detach()
        mask = inq.frozen()
        assert torch.equal(effective[mask], frozen_now[mask])
        if previous is not None:
            assert torch.equal(frozen_now[previous], inq.weight_frozen[previous])
        previous = mask.clone()
    # fully frozen: every effective weight is one of the 3 ternary levels
    s = inq.weight_s
    effective = inq(layer.weight).detach()
    distance = torch.stack([(effective - level).abs() for level in (-s, 0 * s, s)]).min(dim=0).values
    assert distance.max() < 1e-6


def test_inq_frozen_values_are_the_nearest_levels():
    w = torch.tensor([[0.9, -0.1, 0.45, -0.8]])
    inq = INQWeight(w, bits=2)
    inq.freeze(w, 0.5)  # the two largest: 0.9 and -0.8
    assert inq.frozen().tolist() == [[True, False, False, True]]
    assert torch.equal(inq.weight_frozen[inq.frozen()], inq_quantize(w, inq.weight_s, 2)[inq.frozen()])


def test_ste_activation_calibrates_then_quantizes_on_a_fixed_grid():
    act = STEActivation(bits=2, signed=False)
    x = torch.tensor([0.0, 0.5, 1.2, 3.0])
    assert torch.equal(act(x), x)          # calibration passes values through
    act(torch.tensor([1.0]))
    assert float(act.range) == 3.0
    act.end_calibration(act.calibration_statistic())
    # unsigned 2 bits: 3 steps of 1.0 over [0, 3]; values above the range clip
    assert act(torch.tensor([0.4, 0.6, 1.4, 2.6, 7.0])).tolist() == [0.0, 1.0, 1.0, 3.0, 3.0]
    y = torch.tensor([0.4, 7.0], requires_grad=True)
    act(y).sum().backward()
    assert y.grad.tolist() == [1.0, 0.0]   # straight through inside, zero where clipped
    restored = STEActivation(bits=2, signed=False)
    restored.load_state_dict(act.state_dict())
    assert not bool(restored.calibrating) and float(restored.range) == 3.0


@pytest.mark.parametrize("batch_first", [False, True])
def test_quantized_attention_equals_float_attention_with_quantized_projections(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    q = QuantMultiheadAttention.from_float(mha, SymmetricWeight(4), SymmetricWeight(3)).eval()
    assert torch.equal(q.in_proj_weight, mha.in_proj_weight) and torch.equal(q.out_proj.weight, mha.out_proj.weight)
    reference = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    reference.load_state_dict(mha.state_dict())
    with torch.no_grad():
        reference.in_proj_weight.copy_(SymmetricWeight(4)(mha.in_proj_weight))
        reference.out_proj.weight.copy_(SymmetricWeight(3)(mha.out_proj.weight))
    shape = (2, 5, 8) if batch_first else (5, 2, 8)
    x, memory = torch.randn(shape), torch.randn((2, 7, 8) if batch_first else (7, 2, 8))
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    with torch.no_grad():
        out, weights = q(x, memory, memory, key_padding_mask=padding)
        ref_out, ref_weights = reference(x, memory, memory, key_padding_mask=padding)
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(weights, ref_weights, atol=1e-6)
    assert weights[1, :, 5:].abs().max() == 0  # padded keys get no attention
    # and the quantization really changes the output
    assert not torch.allclose(out, mha(x, memory, memory, key_padding_mask=padding)[0], atol=1e-4)


def test_inq_freezes_the_packed_attention_projection():
    from quantlab.quant.algorithms.inq import INQController
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    model = nn.Sequential()
    model.add_module("attn", QuantMultiheadAttention.from_float(mha, INQWeight(mha.in_proj_weight, 3),
                                                                 INQWeight(mha.out_proj.weight, 3)))
    INQController(model, {0: 0.5}).on_epoch_start(0)
    assert model.attn.wq.fraction() == 0.5 and model.attn.out_proj.wq.fraction() == 0.5


def test_a_layer_run_on_several_levels_quantizes_its_weight_once_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = QuantConv2d.from_float(conv, LSQWeight(conv.weight, 4))
    levels = [torch.randn(2, 3, s, s) for s in (8, 4, 2)]
    calls = []
    layer.wq.register_forward_hook(lambda *_: calls.append(1))

    def run() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        layer.zero_grad()
        outs = [layer(x) for x in levels]
        sum((o ** 2).sum() for o in outs).backward()
        return outs, layer.weight.grad.clone(), layer.wq.step.grad.clone()

    separate = run()
    assert len(calls) == 3
    calls.clear()
    with weights_quantized_once(layer):
        with weights_quantized_once(layer):  # a nested use keeps the outer one's tensor
            shared = run()
        assert layer._once is not None
    assert len(calls) == 1 and layer._once is None
    for a, b in zip(separate[0], shared[0]):
        assert torch.equal(a, b)
    # one quantizer node receives the sum of the three uses' gradients: equal up to the order of the sums
    assert torch.allclose(separate[1], shared[1], rtol=1e-5, atol=1e-7)
    assert torch.allclose(separate[2], shared[2], rtol=1e-5, atol=1e-7)


def test_inq_forward_is_the_frozen_value_where_there_is_one_and_masks_the_gradient():
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(6, 5))
    inq = INQWeight(w, 3)
    inq.freeze(w, 0.4)
    frozen = ~torch.isnan(inq.weight_frozen)
    out = inq(w)
    # a second implementation of the same rule, by element
    expected = [[float(inq.weight_frozen[i, j]) if frozen[i, j] else float(w.detach()[i, j]) for j in range(5)]
                for i in range(6)]
    assert out.tolist() == expected
    out.backward(torch.full_like(out, 3.0))
    assert w.grad.tolist() == [[0.0 if frozen[i, j] else 3.0 for j in range(5)] for i in range(6)]
    assert inq.trainable().tolist() == [[0.0 if frozen[i, j] else 1.0 for j in range(5)] for i in range(6)]


def test_a_compiled_quantized_layer_computes_what_the_eager_one_does():
    # engine.compile: the compiled graph takes the calibrated range as fixed (no graph break
    # on the calibration flag) and must give the eager values and gradients
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    eager = QuantConv2d.from_float(conv, LSQWeight(conv.weight, 4), LSQActivation(8, signed=True)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    eager(x)
    eager.aq.end_calibration(eager.aq.calibration_statistic())
    compiled = QuantConv2d.from_float(conv, LSQWeight(conv.weight, 4), LSQActivation(8, signed=True)).double()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(fullgraph=True)
    outs = []
    for layer in (eager, compiled):
        out = layer(x)
        (out ** 2).sum().backward()
        outs.append((out.detach(), layer.weight.grad, layer.wq.step.grad, layer.aq.step.grad))
    for a, b in zip(*outs):  # float64: only the order of the sums differs
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
