"""Quantizers in one pass forward and one pass backward, in eager mode.

Eagerly, every PyTorch op is a pass over the tensor: LSQ costs four passes forward
(divide, round, clamp, scale) and five backward, max-abs five and two, each a full read
and write of an activation map, which is what kept an eager LSQ w4 + a8 step at 1.3x a
float step. Here each direction is one small function compiled once by `torch.compile`
(Inductor: vectorised C++ on the CPU, Triton on CUDA) for any shape, since every tensor
is viewed as [outer, channels, inner] with dynamic sizes. The model itself stays eager.

The kernels compute the eager ops in the same order on the same dtype, and the step's
gradient is the same `sum_to_size` of the same products: outputs and gradients equal
those of `quantizers`' eager `_LSQ`, `_ClippedSTE` and `symmetric_linear` (tested). The
fused nodes keep x for the backward, which recomputes x / s; the eager LSQ node keeps
two tensors of x's size.

The compile costs a process one to a few seconds, which a short run (a test, a `mini`
run) would not win back. So a process quantizes its first `WARMUP_ELEMENTS` elements of
large tensors eagerly (about 4 s of eager LSQ on a 2-core CPU, roughly the compile and
what the fused kernels then save per 2^30 elements), and the kernels take over from there:
a paper-size run after a few dozen steps. The numbers are the same on both paths.

Below `MIN_ELEMENTS` elements, and for dtypes, layouts or devices the kernels do not
cover, the eager nodes run: a fused call costs about 0.25 ms of fixed overhead (the compiled
function's guards, the autograd node), which LSQ's eager passes only exceed from about
2^18 elements on a 2-core CPU (1.5 vs 0.8 ms at 2^19, 17.5 vs 3.6 ms at 2^22; 0.23 vs 0.32
ms at 2^16), and a process that quantizes only small tensors compiles nothing.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

MIN_ELEMENTS = 1 << 18
WARMUP_ELEMENTS = 1 << 30
_DTYPES = (torch.float32, torch.float64)
_DEVICES = ("cpu", "cuda")
_state = {"enabled": True, "failed": False, "warmup": WARMUP_ELEMENTS}


def configure(enabled: bool, warmup_elements: int = WARMUP_ELEMENTS) -> None:
    """Turn the fused kernels on or off for this process (`engine.fused_quantizers`), and
    set how many elements of large tensors are quantized eagerly before they take over."""
    _state["enabled"], _state["warmup"] = enabled, warmup_elements


def canonical_shape(x: torch.Tensor, scale: torch.Tensor) -> tuple[int, int, int] | None:
    """[outer, channels, inner] such that x.reshape of it broadcasts against scale
    reshaped to [1, channels, 1]; None where the fused kernels do not apply."""
    if not (_state["enabled"] and not _state["failed"] and x.numel() >= MIN_ELEMENTS and x.dtype in _DTYPES
            and scale.dtype == x.dtype and x.device.type in _DEVICES and scale.device == x.device
            and x.is_contiguous()):
        return None
    axes = [d for d, n in enumerate(scale.shape) if n != 1]
    if scale.numel() == 1:
        shape = 1, 1, x.numel()
    elif scale.dim() == x.dim() and len(axes) == 1 and scale.shape[axes[0]] == x.shape[axes[0]]:
        shape = math.prod(x.shape[:axes[0]]), x.shape[axes[0]], math.prod(x.shape[axes[0] + 1:])
    else:
        return None
    if _state["warmup"] > 0:  # still warming up: eager, counted
        _state["warmup"] -= x.numel()
        return None
    return shape


def _quantize(x: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """round(clip(x / s)) s, as round then clamp: the bounds are integers."""
    return torch.round(x / scale).clamp(low, high) * scale


def _inside(v: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """1.0 inside [low, high], else 0.0, in v's dtype (a product with it keeps NaNs): the
    mask of `quantizers._inside`, which writes it with `out=` for eager speed; compiled, the
    plain comparison fuses into the kernel."""
    return (v.clamp(low, high) == v).to(v.dtype)


def _ste_grad(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """The straight-through gradient: grad inside the range, 0 where x was clipped."""
    return grad * _inside(x / scale, low, high)


def _lsq_grads(grad: torch.Tensor, x: torch.Tensor, step: torch.Tensor, low: int,
               high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x's gradient and the products whose sum is the step's (before LSQ's g): dQ/ds is
    round(v) - v inside the range and the bound where clipped."""
    v = x / step
    q = torch.round(v).clamp(low, high)
    inside = _inside(v, low, high)
    return grad * inside, grad * torch.addcmul(q, v, inside, value=-1)


def _rescaled_grad(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The eager max-abs quantizer's x gradient, (grad s) / s: its backward multiplies by
    the scale, then divides by it (not exactly grad in floating point)."""
    return grad * scale / scale


def _compiled(fn: Callable) -> Callable:
    """`fn` compiled on its first call, for dynamic shapes; if the compiler cannot run on
    this machine (no C++ compiler, no Triton), a one-line warning, and the eager nodes
    from then on. `torch.compile` itself is called then too: importing the compiler takes
    over a second, which a process that quantizes no large tensor does not pay."""
    compiled: list[Callable] = []

    def call(*args):
        if _state["failed"]:  # a node made before the failure runs its backward eagerly
            return fn(*args)
        if not compiled:
            compiled.append(torch.compile(fn, dynamic=True, fullgraph=True))
        # detached: neither requires_grad nor the views' bases reach the compiler's guards
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        try:
            return compiled[0](*args)
        except (torch._dynamo.exc.BackendCompilerFailed, torch._inductor.exc.InductorError) as e:
            _state["failed"] = True
            warnings.warn(f"fused quantizers off, the compiler failed ({type(e).__name__}): "
                          "eager quantizers from now on (engine.fused_quantizers: false skips "
                          "the attempt)", RuntimeWarning, stacklevel=2)
            return fn(*args)
    return call


_quantize_kernel = _compiled(_quantize)
_ste_grad_kernel = _compiled(_ste_grad)
_lsq_grads_kernel = _compiled(_lsq_grads)
_rescaled_grad_kernel = _compiled(_rescaled_grad)


class FusedLSQ(torch.autograd.Function):
    """LSQ in one pass each way; x and step as [outer, C, inner] and [1, C, 1]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, q_neg: int, q_pos: int, g: float) -> torch.Tensor:
        ctx.save_for_backward(x, step)
        ctx.bounds, ctx.g = (-q_neg, q_pos), g
        return _quantize_kernel(x, step, -q_neg, q_pos)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, step = ctx.saved_tensors
        # a double backward (create_graph: Fisher-trace regularization) runs the eager ops;
        # x / s enters as a constant, as the eager node's saved x / s does
        kernel = _lsq_grads if torch.is_grad_enabled() else _lsq_grads_kernel
        grad_x, products = kernel(grad.contiguous(), x.detach(), step.detach(), *ctx.bounds)
        return grad_x, products.sum_to_size(step.shape) * ctx.g, None, None, None


class FusedClippedSTE(torch.autograd.Function):
    """round(clip(x / s)) s for a fixed s in one pass each way; x as [outer, C, inner]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
        ctx.save_for_backward(x, scale)
        ctx.bounds = (low, high)
        return _quantize_kernel(x, scale, low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, scale = ctx.saved_tensors
        kernel = _ste_grad if torch.is_grad_enabled() else _ste_grad_kernel
        return kernel(grad.contiguous(), x.detach(), scale, *ctx.bounds), None, None, None


class FusedSymmetric(torch.autograd.Function):
    """The max-abs grid for a given scale, in one pass each way; the straight-through
    gradient is not clipped (the grid spans max|W|); w as [outer, C, inner]."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return _quantize_kernel(w, scale, -levels, levels)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        kernel = _rescaled_grad if torch.is_grad_enabled() else _rescaled_grad_kernel
        return kernel(grad.contiguous(), scale), None, None


def lsq(x: torch.Tensor, step: torch.Tensor, q_neg: int, q_pos: int, g: float,
        shape: tuple[int, int, int]) -> torch.Tensor:
    """`quantizers.lsq` through `FusedLSQ`, x viewed as `shape` (from `canonical_shape`)."""
    out = FusedLSQ.apply(x.view(shape), step.view(1, shape[1], 1), q_neg, q_pos, g)
    return out.view(x.shape)


def clipped_ste(x: torch.Tensor, scale: torch.Tensor, low: int, high: int,
                shape: tuple[int, int, int]) -> torch.Tensor:
    """`quantizers.clipped_ste` through `FusedClippedSTE`, x viewed as `shape`."""
    return FusedClippedSTE.apply(x.view(shape), scale.view(1, shape[1], 1), low, high).view(x.shape)


def symmetric(w: torch.Tensor, scale: torch.Tensor, levels: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """`quantizers.symmetric_linear` for its scale through `FusedSymmetric`, w viewed as `shape`."""
    return FusedSymmetric.apply(w.view(shape), scale.view(1, shape[1], 1), levels).view(w.shape)
