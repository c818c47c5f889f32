"""Our fake quantizers against PyTorch's fused ops: forward and forward + backward time, and
where the two disagree, at `mini` and paper tensor sizes.

    .venv/bin/python benchmarks/fake_quant.py [--repeats 20] [--threads 2]

Pairs, on activations (8, 16, 64, 64) and (1, 256, 128, 128) and weights (32, 32, 3, 3) and
(256, 256, 3, 3), on the CPU:
  lsq a8 / lsq w4        quantizers.lsq per tensor (signed 8-bit activations, 4-bit weights)
                         vs torch._fake_quantize_learnable_per_tensor_affine (same bounds, zero
                         point 0, grad_factor our g = 1 / sqrt(numel Q_P))
  lsq w4 per channel     LSQWeight(per_channel), step [C, 1, 1, 1], vs
                         torch._fake_quantize_learnable_per_channel_affine (scale [C], axis 0)
  symmetric w4 (per channel)  quantizers.symmetric_linear vs torch.fake_quantize_per_tensor_affine
                         / fake_quantize_per_channel_affine at max|W| / 7, zero point 0, -7..7
                         (both compute the scale inside the timed call)
  ste a8                 quantizers.clipped_ste vs torch.fake_quantize_per_tensor_affine, range
                         3 sigma (signed, -127..127, as STEActivation)
Times are medians (benchmarks/timing.py); forward runs with autograd on, as in training. Then
the outputs and gradients of the two are compared on the same input and output gradient:
entries whose outputs differ, the largest differences, entries whose x gradient differs, and
`past_bound`, the entries of x in (Q_P, Q_P + 0.5) or (-Q_N - 0.5, -Q_N) steps. PyTorch
rounds before its range test, so it passes the x gradient there; LSQ (ours) clips it. Where
the step is fixed apart from x (LSQ, STE), 1% of the entries are moved into those bands; a
max-abs scale puts every entry in range (bar rounding of max|W| / 7), so symmetric has none.
For LSQ the step gradient is compared twice: over all entries, and with the output gradient
zeroed in the bands, where only float rounding should separate the two.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tables import markdown  # noqa: E402  (benchmarks/, the script's folder)
from timing import median_seconds  # noqa: E402

from quantlab.quant import fused, quantizers as Q  # noqa: E402
from quantlab.quant.algorithms.lsq import LSQWeight  # noqa: E402

SIZES = {"mini": {"activation": (8, 16, 64, 64), "weight": (32, 32, 3, 3)},
         "paper": {"activation": (1, 256, 128, 128), "weight": (256, 256, 3, 3)}}
#: share of the entries moved just past the bounds, where the two x gradients differ
PAST_BOUND_FRACTION = 0.01
WEIGHT_STD = 0.05


@dataclass
class Pair:
    """Our op and PyTorch's on the same input, each with the tensors it differentiates
    (x first, then a learned step)."""
    ours: Callable[[], torch.Tensor]
    theirs: Callable[[], torch.Tensor]
    ours_inputs: list[torch.Tensor]
    theirs_inputs: list[torch.Tensor]
    bands: torch.Tensor  # where x lies within half a step past a bound (`in_bands`)


def in_bands(x: torch.Tensor, step: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Where x / step lies within half a step past a bound: inside for PyTorch, clipped for LSQ."""
    v = x.detach() / step
    return ((v > high) & (v < high + 0.5)) | ((v < low) & (v > low - 0.5))


def past_bounds(x: torch.Tensor, step: torch.Tensor, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """x with PAST_BOUND_FRACTION of its entries moved into the half-step bands past either
    bound (at 0.05-0.45 steps, clear of the band's ends and of rounding ties)."""
    pick = torch.rand(x.shape, generator=generator) < PAST_BOUND_FRACTION
    upper = torch.rand(x.shape, generator=generator) < 0.5
    past = 0.05 + 0.4 * torch.rand(x.shape, generator=generator)
    return torch.where(pick, torch.where(upper, high + past, low - past) * step, x)


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


def lsq_per_tensor(x: torch.Tensor, bits: int, generator: torch.Generator) -> Pair:
    q_neg, q_pos = Q.lsq_range(bits, signed=True)
    step = Q.lsq_init_step(x, q_pos).reshape(1)
    x = leaf(past_bounds(x, step, -q_neg, q_pos, generator))
    ours, theirs, zero = leaf(step), leaf(step), torch.zeros(1)
    g = 1.0 / (x.numel() * q_pos) ** 0.5
    return Pair(lambda: Q.lsq(x, ours, q_neg, q_pos),
                lambda: torch._fake_quantize_learnable_per_tensor_affine(x, theirs, zero, -q_neg, q_pos, g),
                [x, ours], [x, theirs], in_bands(x, step, -q_neg, q_pos))


def lsq_per_channel(w: torch.Tensor, bits: int, generator: torch.Generator) -> Pair:
    quantizer = LSQWeight(w, bits, per_channel=True)
    step = quantizer.step.detach()
    w = leaf(past_bounds(w, step, -quantizer.q_neg, quantizer.q_pos, generator))
    theirs, zero = leaf(step.reshape(-1)), torch.zeros(w.shape[0])
    g = 1.0 / (w[0].numel() * quantizer.q_pos) ** 0.5
    return Pair(lambda: quantizer(w),
                lambda: torch._fake_quantize_learnable_per_channel_affine(w, theirs, zero, 0, -quantizer.q_neg,
                                                                          quantizer.q_pos, g),
                [w, quantizer.step], [w, theirs], in_bands(w, step, -quantizer.q_neg, quantizer.q_pos))


def symmetric(w: torch.Tensor, bits: int, per_channel: bool) -> Pair:
    q = Q.signed_levels(bits)
    w = leaf(w)
    if per_channel:
        zero = torch.zeros(w.shape[0], dtype=torch.int32)

        def theirs() -> torch.Tensor:
            scale = w.detach().abs().amax(dim=tuple(range(1, w.dim()))) / q
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -q, q)
    else:
        zero = torch.zeros((), dtype=torch.int32)

        def theirs() -> torch.Tensor:
            return torch.fake_quantize_per_tensor_affine(w, w.detach().abs().amax() / q, zero, -q, q)
    step = Q.symmetric_scale(w, bits, per_channel)
    return Pair(lambda: Q.symmetric_linear(w, bits, per_channel), theirs, [w], [w], in_bands(w, step, -q, q))


def ste(x: torch.Tensor, bits: int, generator: torch.Generator) -> Pair:
    """Signed activations as STEActivation quantizes them, at a range of 3 sigma."""
    levels = 2 ** (bits - 1) - 1
    scale = (3 * x.std() / levels).reshape(1)
    x = leaf(past_bounds(x, scale, -levels, levels, generator))
    zero = torch.zeros((), dtype=torch.int32)
    return Pair(lambda: Q.clipped_ste(x, scale, -levels, levels),
                lambda: torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero, -levels, levels),
                [x], [x], in_bands(x, scale, -levels, levels))


def pairs(size: str, generator: torch.Generator) -> dict[str, Pair]:
    """Every compared pair at `size`, each on its own random input."""
    act, weight = SIZES[size]["activation"], SIZES[size]["weight"]

    def a() -> torch.Tensor:
        return torch.randn(act, generator=generator)

    def w() -> torch.Tensor:
        return WEIGHT_STD * torch.randn(weight, generator=generator)
    return {"lsq a8": lsq_per_tensor(a(), 8, generator), "lsq w4": lsq_per_tensor(w(), 4, generator),
            "lsq w4 per channel": lsq_per_channel(w(), 4, generator),
            "symmetric w4": symmetric(w(), 4, False), "symmetric w4 per channel": symmetric(w(), 4, True),
            "ste a8": ste(a(), 8, generator)}


def gradients(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor],
              grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(forward(), inputs, grad_out)


def compare(pair: Pair, grad_out: torch.Tensor) -> dict:
    """How far PyTorch's outputs and gradients are from ours on the same input: x gradients
    that one passes and the other cuts (an exact count: grad_out has no zeros), the largest
    differences, and the step gradient's difference relative to PyTorch's, over all entries
    and with the output gradient zeroed in the bands (where only rounding should remain)."""
    ours, theirs = pair.ours().detach(), pair.theirs().detach()
    g_ours = gradients(pair.ours, pair.ours_inputs, grad_out)
    g_theirs = gradients(pair.theirs, pair.theirs_inputs, grad_out)
    row = {"out_differ": int((ours != theirs).sum()), "max_out_diff": float((ours - theirs).abs().max()),
           "past_bound": int(pair.bands.sum()),
           "x_grad_cut_differ": int(((g_ours[0] == 0) != (g_theirs[0] == 0)).sum()),
           "max_x_grad_diff": float((g_ours[0] - g_theirs[0]).abs().max())}
    if len(g_ours) > 1:
        off_band = grad_out.masked_fill(pair.bands, 0.0)
        row["step_grad_rel_diff"] = step_difference(g_ours[1], g_theirs[1])
        row["step_grad_rel_diff_off_band"] = step_difference(gradients(pair.ours, pair.ours_inputs, off_band)[1],
                                                             gradients(pair.theirs, pair.theirs_inputs, off_band)[1])
    return row


def step_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs| of a step's gradient (ours [C, 1, 1, 1], theirs [C])."""
    return float((ours.reshape(theirs.shape) - theirs).abs().max() / theirs.abs().max())


def times(pair: Pair, grad_out: torch.Tensor, repeats: int) -> dict:
    """Median milliseconds of each op, forward alone and forward + backward."""
    def ms(work: Callable[[], object]) -> float:
        return 1000 * median_seconds(work, repeats)
    row = {"ours_fwd_ms": ms(pair.ours), "torch_fwd_ms": ms(pair.theirs),
           "ours_fwd_bwd_ms": ms(lambda: gradients(pair.ours, pair.ours_inputs, grad_out)),
           "torch_fwd_bwd_ms": ms(lambda: gradients(pair.theirs, pair.theirs_inputs, grad_out))}
    row["fwd_bwd_ours_over_torch"] = row["ours_fwd_bwd_ms"] / row["torch_fwd_bwd_ms"]
    return row


def measure(threads: int, repeats: int = 20) -> list[dict]:
    """One row per pair and size: times, then the comparison. Ours are timed in a long run's
    steady state: the fused kernels from the first large tensor (no warm-up)."""
    torch.set_num_threads(threads)
    fused.configure(True, warmup_elements=0)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for size in SIZES:
        for name, pair in pairs(size, generator).items():
            x = pair.ours_inputs[0]
            grad_out = torch.randn(x.shape, generator=generator)
            rows.append({"op": name, "size": size, "shape": "x".join(map(str, x.shape)),
                         **times(pair, grad_out, repeats), **compare(pair, grad_out)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    rows = measure(args.threads, args.repeats)
    print(f"ours vs PyTorch's fused fake quantization, cpu, {args.threads} threads, median of {args.repeats}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
