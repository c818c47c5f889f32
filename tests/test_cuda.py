"""What only a GPU shows: the same numbers on CUDA as on the CPU, and files that cross between
them. Marked `cuda` and skipped with their reason on a machine without one; benchmarks/gpu_check.sh
runs them on a GPU machine (`pytest -m cuda`)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from quantlab.engine import checkpoint
from quantlab.quant import fused
from quantlab.quant import quantizers as Q
from quantlab.quant.algorithms.lsq import LSQActivation, LSQWeight
from quantlab.quant.layers import QuantConv2d

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU: benchmarks/gpu_check.sh runs these on one")]


@pytest.fixture(autouse=True)
def exact_cuda_math():
    """No TF32 in convolutions and matrix products: the CPU computes them in full float32;
    the fused quantizers from the first large tensor (no warm-up)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    fused.configure(True, warmup_elements=0)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    fused.configure(True)


def tiny_qat_model(dtype: torch.dtype) -> nn.Module:
    """Two LSQ w4 + a8 convolutions (seeded), their activation steps calibrated on a fixed batch."""
    torch.manual_seed(0)
    layers = []
    for c_in, c_out in ((3, 16), (16, 8)):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        layers.append(QuantConv2d.from_float(conv, LSQWeight(conv.weight, 4), LSQActivation(8, signed=True)))
    model = nn.Sequential(layers[0], nn.ReLU(), layers[1]).to(dtype)
    model(torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1), dtype=dtype))
    for layer in layers:
        layer.aq.end_calibration(layer.aq.calibration_statistic())
    return model


# float64: only the order of the sums differs; float32: a conv output a rounding apart may land
# on the other side of a grid point and move its activation by one step
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-3)])
def test_a_tiny_qat_model_has_the_same_loss_and_gradients_on_cpu_and_cuda(dtype, rtol):
    # 2 x 16 x 128 x 128 activations take the fused kernels (Triton on CUDA, C++ on the CPU)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2), dtype=dtype)
    target = torch.randn(2, 8, 128, 128, generator=torch.Generator().manual_seed(3), dtype=dtype)
    results = []
    for device in ("cpu", "cuda"):
        model = tiny_qat_model(dtype).to(device)
        loss = ((model(x.to(device)) - target.to(device)) ** 2).mean()
        loss.backward()
        results.append((loss.detach().cpu(), {n: p.grad.cpu() for n, p in model.named_parameters()}))
    (cpu_loss, cpu_grads), (cuda_loss, cuda_grads) = results
    torch.testing.assert_close(cuda_loss, cpu_loss, rtol=rtol, atol=0)
    for name, grad in cpu_grads.items():
        torch.testing.assert_close(cuda_grads[name], grad, rtol=rtol * 100, atol=rtol * grad.abs().max().item(),
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("elements", [4096, 1 << 19], ids=["eager", "fused"])
def test_quantizer_gradients_on_cuda_match_the_cpu_ones(elements):
    assert (elements >= fused.MIN_ELEMENTS) == (elements == 1 << 19)
    x = torch.randn(elements, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).reshape(-1, 64) * 3
    upstream = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    step = torch.tensor([0.05], dtype=torch.float64)
    quantizers = {"lsq": lambda a, s: Q.lsq(a, s, 128, 127),
                  "clipped_ste": lambda a, s: Q.clipped_ste(a, s, -127, 127),
                  "symmetric": lambda a, s: Q.symmetric_linear(a, 4)}
    for name, quantizer in quantizers.items():
        results = []
        for device in ("cpu", "cuda"):
            a = x.to(device).requires_grad_()
            s = step.to(device).requires_grad_()
            out = quantizer(a, s)
            out.backward(upstream.to(device))
            results.append([t.cpu() for t in (out.detach(), a.grad, s.grad if s.grad is not None else torch.zeros(1))])
        for cpu, cuda in zip(*results):
            torch.testing.assert_close(cuda, cpu, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_a_checkpoint_written_on_cuda_loads_on_the_cpu(tmp_path):
    model = tiny_qat_model(torch.float32).cuda()
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"model": model.state_dict(), "epoch": 3}, path)
    state = checkpoint.load(path)  # weights_only, onto the CPU
    assert state["epoch"] == 3
    for name, tensor in model.state_dict().items():
        assert state["model"][name].device.type == "cpu"
        assert torch.equal(state["model"][name], tensor.cpu()), name
    again = tiny_qat_model(torch.float32)
    again.load_state_dict(state["model"])
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(again(x), model(x.cuda()).cpu(), rtol=1e-4, atol=1e-4)
