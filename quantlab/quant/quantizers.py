"""Quantizer functions: symmetric linear (max-abs), 1-bit sign, LSQ, INQ levels, STE rounding.

Functions here are stateless; the modules that hold learned steps, INQ masks and
calibrated ranges build on them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from quantlab.quant import fused


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x forward, gradient multiplied by `scale` (LSQ's step-size gradient scaling)."""
    return (x - x * scale).detach() + x * scale


def signed_levels(bits: int) -> int:
    """Largest positive integer level of a symmetric signed grid: 2^(b-1) - 1."""
    if not 2 <= bits <= 8:
        raise ValueError(f"symmetric linear quantization takes 2-8 bits, got {bits}")
    return 2 ** (bits - 1) - 1


def along(values: torch.Tensor, axis: int, dim: int) -> torch.Tensor:
    """One value per channel of `axis`, shaped to broadcast against a `dim`-dimensional
    tensor (e.g. a weight's scales: [C, 1, 1, 1] on axis 0, [1, C, 1, 1] on axis 1)."""
    shape = [1] * dim
    shape[axis] = -1
    return values.reshape(shape)


def _abs_statistic(w: torch.Tensor, reduce: Callable[..., torch.Tensor], per_channel: bool, axis: int) -> torch.Tensor:
    """reduce(|W|) over the whole tensor, or over every dim but `axis` (one value per
    channel of `axis`, kept there so it broadcasts against w)."""
    if not per_channel:
        return reduce(w.abs())
    axis = axis % w.dim()
    others = tuple(d for d in range(w.dim()) if d != axis)
    return reduce(w.abs(), dim=others, keepdim=True) if others else w.abs()


def max_abs(w: torch.Tensor, per_channel: bool, axis: int = 0) -> torch.Tensor:
    """max|W| per tensor, or per channel of `axis` (the output channels: 0 for Conv2d and
    Linear, 1 for ConvTranspose2d) shaped to broadcast against w. Per tensor and along a
    contiguous tensor's first axis it is max(-min W, max W) from one read (`aminmax`), the
    same number without |W| written out: DETR-R50 quantizes 41M weights a step."""
    if w.dim() > 1 and w.is_contiguous() and (not per_channel or axis % w.dim() == 0):
        low, high = torch.aminmax(w.reshape(w.shape[0] if per_channel else 1, -1), dim=1)
        return torch.maximum(-low, high).reshape((-1,) + (1,) * (w.dim() - 1) if per_channel else ())
    return _abs_statistic(w, torch.amax, per_channel, axis)


def mean_abs(w: torch.Tensor, per_channel: bool, axis: int = 0) -> torch.Tensor:
    """mean|W| per tensor, or per channel of `axis` shaped to broadcast against w."""
    return _abs_statistic(w, torch.mean, per_channel, axis)


def symmetric_scale(w: torch.Tensor, bits: int, per_channel: bool = False, axis: int = 0) -> torch.Tensor:
    """The step of the symmetric max-abs grid: max|W| / (2^(n-1) - 1) (per tensor or per
    channel of `axis`); no gradient."""
    return max_abs(w.detach(), per_channel, axis).clamp_min(torch.finfo(w.dtype).tiny) / signed_levels(bits)


def symmetric_linear(w: torch.Tensor, bits: int, per_channel: bool = False, axis: int = 0) -> torch.Tensor:
    """Eq. 6 of the output-sensitivity DETR paper, with straight-through rounding:
    Q(W) = round(W (2^(n-1) - 1) / max|W|) max|W| / (2^(n-1) - 1).
    The range is a statistic of W, not trained: its gradient is cut (LSQ learns one).
    Per channel, max|W| is taken per channel of `axis`."""
    scale = symmetric_scale(w, bits, per_channel, axis)
    shape = fused.canonical_shape(w, scale)
    if shape is not None and not torch.compiler.is_compiling():  # one pass each way, same values
        return fused.symmetric(w, scale, signed_levels(bits), shape)
    return round_ste(w / scale) * scale


def sign_scale(w: torch.Tensor, per_channel: bool, axis: int = 0) -> torch.Tensor:
    """mean|W| per tensor, or per channel of `axis` shaped to broadcast: the L2-optimal
    scale of a sign code."""
    return mean_abs(w, per_channel, axis)


def sign_binary(w: torch.Tensor, per_channel: bool = False, axis: int = 0) -> torch.Tensor:
    """1 bit: sign(W) times mean|W| (per tensor or per channel of `axis`), straight-through."""
    alpha = sign_scale(w, per_channel, axis)
    binary = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w)) * alpha
    return w + (binary - w).detach()


def _inside(v: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """1.0 where low <= v <= high, else 0.0, in v's dtype. A float mask written by
    `torch.eq(..., out=)` runs vectorized; a bool mask, and a float-times-bool product,
    take PyTorch's slow mixed-dtype path on CPU (4-40x slower at activation sizes)."""
    return torch.eq(v.clamp(low, high), v, out=torch.empty_like(v))


class _LSQ(torch.autograd.Function):
    """LSQ as one autograd node: three elementwise passes forward, three plus two dot
    products backward, so quantizing activation maps costs little more than the layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, q_neg: int, q_pos: int,
                g: float) -> torch.Tensor:
        v = x / step
        q = torch.round(v).clamp_(-q_neg, q_pos)  # = round(clip(v)): the bounds are integers
        ctx.save_for_backward(v, q, step)
        ctx.bounds, ctx.g = (q_neg, q_pos), g
        return q.mul(step)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, q, step = ctx.saved_tensors
        q_neg, q_pos = ctx.bounds
        inside = _inside(v, -q_neg, q_pos)
        grad_x = grad * inside  # straight through inside the range
        # dQ/ds = round(v) - v inside, -Q_N / Q_P where clipped: q - v x inside, summed as
        # one product (sum(grad q) - sum(grad_x v) cancels two large sums) by torch's
        # cascade sum
        slope = torch.addcmul(q, v, inside, value=-1)
        grad_step = (grad * slope).sum_to_size(step.shape) * ctx.g
        return grad_x, grad_step, None, None, None


class _ClippedSTE(torch.autograd.Function):
    """round(clip(x / scale, low, high)) scale for a fixed scale; the gradient passes
    straight through inside the range and is zero where x was clipped."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
        v = x / scale
        ctx.save_for_backward(v)
        ctx.bounds = (low, high)
        return torch.round(v).clamp_(low, high).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (v,) = ctx.saved_tensors
        low, high = ctx.bounds
        return grad * _inside(v, low, high), None, None, None


def clipped_ste(x: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """round(clip(x / scale, low, high)) scale, straight through inside the range; one
    pass each way on large tensors (`fused`), the same values as the eager node."""
    shape = fused.canonical_shape(x, scale)
    if shape is not None and not torch.compiler.is_compiling():
        return fused.clipped_ste(x, scale.detach(), low, high, shape)
    return _ClippedSTE.apply(x, scale.detach(), low, high)


def lsq(x: torch.Tensor, step: torch.Tensor, q_neg: int, q_pos: int) -> torch.Tensor:
    """LSQ (Esser et al. 2020): round(clip(x / s, -Q_N, Q_P)) s with a straight-through
    gradient for x, and the step's gradient scaled by g = 1 / sqrt(N Q_P), N the number of
    elements x holds per step."""
    g = 1.0 / (x.numel() / step.numel() * q_pos) ** 0.5
    if torch.compiler.is_compiling():
        return _lsq_composite(x, step, q_neg, q_pos, g)
    shape = fused.canonical_shape(x, step)
    if shape is not None:  # large tensors: one pass each way, the same values as _LSQ
        return fused.lsq(x, step, q_neg, q_pos, g, shape)
    return _LSQ.apply(x, step, q_neg, q_pos, g)


def _lsq_composite(x: torch.Tensor, step: torch.Tensor, q_neg: int, q_pos: int, g: float) -> torch.Tensor:
    """The same function and gradients as `_LSQ`, from differentiable ops (the form of the
    LSQ paper's code): a compiler derives the backward and fuses the passes, which it does
    not do through the hand-written node. Eager mode keeps `_LSQ`: here every op is a pass."""
    s = grad_scale(step, g)
    return round_ste((x / s).clamp(-q_neg, q_pos)) * s


def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P): signed [-2^(b-1), 2^(b-1) - 1], unsigned [0, 2^b - 1]."""
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def lsq_init_step(x: torch.Tensor, q_pos: int, per_channel: bool = False, axis: int = 0) -> torch.Tensor:
    """The LSQ paper's initial step: 2 mean|x| / sqrt(Q_P), per tensor (a scalar) or per
    channel of `axis` (shaped to broadcast against x)."""
    return 2 * mean_abs(x.detach(), per_channel, axis) / q_pos ** 0.5


def inq_levels(s: torch.Tensor | float, bits: int) -> torch.Tensor:
    """INQ levels as the MQAT code uses them: linspace(-s, s, 2^b - 1)."""
    n = 2 ** bits - 1
    return torch.linspace(-1.0, 1.0, n) * torch.as_tensor(s, dtype=torch.float32)


def inq_quantize(w: torch.Tensor, s: torch.Tensor | float, bits: int) -> torch.Tensor:
    """Each entry of w replaced by its nearest level of linspace(-s, s, 2^b - 1); the grid
    is uniform, so this is a clamped rounding (no search over levels)."""
    half = (2 ** bits - 2) // 2  # levels on each side of zero
    step = torch.as_tensor(s, dtype=w.dtype) / half
    return torch.clamp(torch.round(w / step), -half, half) * step


def inq_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The s whose levels linspace(-s, s, 2^b - 1) minimise the L2 quantization error of w,
    found as the MQAT reference code finds it (inq_ops.py, `uniform-l2-opt`): SciPy's
    `brute` over 1000 points of [1e-6, max|W|], refined by Nelder-Mead (`fmin`)."""
    values = w.detach().double().flatten().cpu()

    def error(x: np.ndarray) -> float:
        return float(torch.linalg.vector_norm(inq_quantize(values, abs(float(np.ravel(x)[0])), bits) - values))
    from scipy.optimize import brute, fmin  # a third of a second to import: INQ runs only
    best = brute(error, ranges=((1e-6, max(float(values.abs().max()), 2e-6)),), Ns=1000, finish=fmin, disp=False)
    return torch.tensor(abs(float(np.ravel(best)[0])), dtype=w.dtype)
