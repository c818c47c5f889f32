"""The fused quantizers (quantlab.quant.fused) against the eager ones they replace: the
same outputs and gradients to the bit, on every layout the layers produce, and the eager
nodes wherever the kernels do not apply. The eager ones are pinned to the papers' formulas
in test_quantizers.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from quantlab.quant import fused
from quantlab.quant import quantizers as Q
from tests.conftest import REPO


@pytest.fixture
def kernels():
    """Run `fn` with the fused kernels on and off; the setting is restored after."""
    def both(fn):
        results = []
        for enabled in (True, False):
            fused.configure(enabled, warmup_elements=0)
            results.append(fn())
        return results
    yield both
    fused.configure(True)


def grads(quantizer, x: torch.Tensor, scale: torch.Tensor | None, seed: int = 1):
    """Output, x's gradient and the scale's (when learned) for a random upstream gradient;
    also the autograd node's name, to tell the fused path from the eager one."""
    x = x.clone().requires_grad_()
    s = None if scale is None else scale.clone().requires_grad_()
    out = quantizer(x, s)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)))
    return node(out), out.detach(), x.grad, None if s is None else s.grad


def node(out: torch.Tensor) -> str:
    """The quantizer's autograd node behind `out` (the fused ones end in a view)."""
    fn = out.grad_fn
    return type(fn.next_functions[0][0] if type(fn).__name__ == "ViewBackward0" else fn).__name__


# (x shape, step shape, Q_N, Q_P): activations after ReLU (unsigned) and signed, DETR's
# [tokens, batch, channels], weights per tensor and per channel of axis 0 (conv, linear)
# and 1 (transposed conv)
LSQ_CASES = [((4, 64, 32, 32), (1,), 0, 255), ((4, 64, 32, 32), (1,), 128, 127), ((600, 2, 256), (1,), 8, 7),
             ((256, 128, 3, 3), (1,), 8, 7), ((256, 128, 3, 3), (256, 1, 1, 1), 8, 7),
             ((1024, 256), (1024, 1), 2, 1), ((128, 256, 3, 3), (1, 256, 1, 1), 8, 7)]


@pytest.mark.parametrize("shape,step_shape,q_neg,q_pos", LSQ_CASES)
def test_fused_lsq_equals_the_eager_node_to_the_bit(kernels, shape, step_shape, q_neg, q_pos):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 3
    x = x.relu() if q_neg == 0 else x
    step = (torch.rand(step_shape, generator=gen) + 1) * 4 / q_pos  # the grid ends at 4-8: some x clip
    fused_run, eager_run = kernels(lambda: grads(lambda a, s: Q.lsq(a, s, q_neg, q_pos), x, step))
    assert (fused_run[0], eager_run[0]) == ("FusedLSQBackward", "_LSQBackward")
    # inputs reach past each bound, so each branch of the gradient is compared
    v = x / step
    assert (v > q_pos).any() and (v < -q_neg).any() == (q_neg > 0) and ((v > -q_neg) & (v < q_pos)).any()
    for a, b in zip(fused_run[1:], eager_run[1:]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("per_channel,axis", [(False, 0), (True, 0), (True, 1)])
def test_fused_max_abs_equals_the_eager_ops_to_the_bit(kernels, per_channel, axis):
    w = torch.randn(256, 128, 3, 3, generator=torch.Generator().manual_seed(2))
    fused_run, eager_run = kernels(lambda: grads(lambda a, _: Q.symmetric_linear(a, 4, per_channel, axis), w, None))
    assert (fused_run[0], eager_run[0]) == ("FusedSymmetricBackward", "MulBackward0")
    for a, b in zip(fused_run[1:3], eager_run[1:3]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("low,high", [(0, 255), (-127, 127)])
def test_fused_clipped_ste_equals_the_eager_node_to_the_bit(kernels, low, high):
    x = torch.randn(8, 64, 24, 24, generator=torch.Generator().manual_seed(3)) * 8
    scale = torch.tensor([0.03])
    fused_run, eager_run = kernels(lambda: grads(lambda a, _: Q.clipped_ste(a, scale, low, high), x, None))
    assert (fused_run[0], eager_run[0]) == ("FusedClippedSTEBackward", "_ClippedSTEBackward")
    for a, b in zip(fused_run[1:3], eager_run[1:3]):
        assert torch.equal(a, b)


def test_a_double_backward_through_fused_lsq_equals_the_eager_one(kernels):
    # Fisher-trace regularization differentiates the gradients (create_graph)
    x = torch.randn(4, 64, 32, 32, generator=torch.Generator().manual_seed(4))

    def second_order():
        a, s = x.clone().requires_grad_(), torch.tensor([0.1], requires_grad=True)
        out = Q.lsq(a, s, 128, 127)
        ga, gs = torch.autograd.grad((out ** 2).sum(), (a, s), create_graph=True)
        ((ga ** 2).sum() + gs.sum()).backward()
        return node(out), ga.detach(), gs.detach(), a.grad, s.grad
    fused_run, eager_run = kernels(second_order)
    assert (fused_run[0], eager_run[0]) == ("FusedLSQBackward", "_LSQBackward")
    for a, b in zip(fused_run[1:], eager_run[1:]):
        assert torch.equal(a, b)


def test_the_fused_kernels_keep_nans_where_the_eager_product_does(kernels):
    # the health checks see a NaN gradient; a select instead of a product would zero it
    x = torch.randn(4, 64, 32, 32, generator=torch.Generator().manual_seed(5)) * 50

    def run():
        a, s = x.clone().requires_grad_(), torch.tensor([0.1], requires_grad=True)
        out = Q.lsq(a, s, 128, 127)
        upstream = torch.ones_like(out)
        upstream[0, 0, 0, :4] = float("nan")
        out.backward(upstream)
        return a.grad[0, 0, 0, :4], s.grad
    (fused_x, fused_s), (eager_x, eager_s) = kernels(run)
    assert torch.equal(fused_x.isnan(), eager_x.isnan()) and fused_x.isnan().any()
    assert fused_s.isnan().all() and eager_s.isnan().all()


@pytest.mark.parametrize("case", ["small", "half", "strided", "two_channel_axes", "disabled"])
def test_the_eager_node_runs_where_the_kernels_do_not_apply(case):
    x = torch.randn(4, 64, 32, 32)
    step = torch.tensor([0.1])
    if case == "small":
        x = x[:3]  # 196608 elements, under fused.MIN_ELEMENTS
    elif case == "half":
        x, step = x.bfloat16(), step.bfloat16()
    elif case == "strided":
        x = x.transpose(2, 3)
    elif case == "two_channel_axes":
        step = torch.full((4, 64, 1, 1), 0.1)
    fused.configure(case != "disabled", warmup_elements=0)
    try:
        node = type(Q.lsq(x.requires_grad_(), step.requires_grad_(), 128, 127).grad_fn).__name__
    finally:
        fused.configure(True)
    assert node == "_LSQBackward"


def test_a_process_quantizes_its_first_elements_eagerly_then_fused():
    # the compile pays only in long runs: 2^20 + 2^18 elements of warm-up here, then the kernels
    x, step = torch.randn(4, 64, 32, 32), torch.tensor([0.1])
    fused.configure(True, warmup_elements=(1 << 20) + (1 << 18))
    try:
        nodes = [node(Q.lsq(x.clone().requires_grad_(), step.clone().requires_grad_(), 128, 127))
                 for _ in range(7)]
        small = node(Q.lsq(x[:1].clone().requires_grad_(), step.clone().requires_grad_(), 128, 127))
    finally:
        fused.configure(True)
    assert nodes == ["_LSQBackward"] * 5 + ["FusedLSQBackward"] * 2
    assert small == "_LSQBackward"  # under MIN_ELEMENTS: eager and not counted


def test_a_machine_without_a_compiler_warns_once_and_quantizes_eagerly(tmp_path):
    # CXX names the C++ compiler Inductor calls; an empty cache makes it compile
    script = ("import warnings, torch\n"
              "from quantlab.quant import fused, quantizers as Q\n"
              "warnings.simplefilter('always')\n"
              "x, s = torch.randn(4, 64, 32, 32, requires_grad=True), torch.tensor([0.1], requires_grad=True)\n"
              "fused.configure(True, warmup_elements=0)\n"
              "with warnings.catch_warnings(record=True) as seen:\n"
              "    out = Q.lsq(x, s, 128, 127)\n"
              "    out.backward(torch.ones_like(out))\n"
              "    again = Q.lsq(x, s, 128, 127)\n"
              "ref_x, ref_s = x.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()\n"
              "ref = Q._LSQ.apply(ref_x, ref_s, 128, 127, 1 / (x.numel() * 127) ** 0.5)\n"
              "ref.backward(torch.ones_like(ref))\n"
              "print(len([w for w in seen if 'fused quantizers off' in str(w.message)]), type(again.grad_fn).__name__,\n"
              "      torch.equal(out, ref), torch.equal(x.grad, ref_x.grad), torch.equal(s.grad, ref_s.grad))\n")
    env = dict(os.environ, CXX=str(tmp_path / "no-compiler"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"),
               TORCHINDUCTOR_FX_GRAPH_CACHE="0")
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "_LSQBackward", "True", "True", "True"]
