"""Cost of the per-layer sensitivities of --mode ptq against one training step, and the
ILP's solve time on a DETR-R50-sized layer list.

    .venv/bin/python benchmarks/sensitivity_cost.py [--repeats 15] [--threads 2]

On the DETR `mini` network and one 96 px synthetic image: the median time of one
training step (forward + set loss + backward + AdamW, batch of 1), of one with the
Fisher-trace regularizer of --mode fisher (double backward), of one Hutchinson
sample of the loss trace (a Hessian-vector product), of one Hutchinson sample of the
distillation trace, and of one Fisher sample (a per-image gradient). Printed as seconds
per image and as ratios to the training step. Then the average-bit ILP (Huang et al., Output Sensitivity-Aware DETR Quantization, section Method) for
DETR-R50's layers at 6, 5 and 4 bits, with random sensitivities of the right shape.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timing import median_seconds  # noqa: E402  (benchmarks/, the script's folder)

from problems.COCO.DETR import build_task  # noqa: E402
from problems.COCO.DETR.network import DETR  # noqa: E402
from quantlab.engine.config import build_config  # noqa: E402
from quantlab.modes import config_files  # noqa: E402
from quantlab.quant.editing import quantizable_weights  # noqa: E402
from quantlab.quant.regularizers import FisherTrace  # noqa: E402
from quantlab.sensitivity.fisher import fisher_traces  # noqa: E402
from quantlab.sensitivity.hessian import hutchinson_traces  # noqa: E402
from quantlab.sensitivity.ilp import average_bits  # noqa: E402
from quantlab.sensitivity.omega import flat  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = build_config(config_files(), REPO / "problems" / "COCO" / "DETR" / "config.yaml", "mini",
                       ["data.root=COCO-bench", "data.synthetic.params.images={train: 4, val: 2}"])
    with tempfile.TemporaryDirectory() as tmp:
        task = build_task(cfg, Path(tmp))
        task.prepare_data()
        batch = task.collate([task.dataset("train", train=False)[0]])
        model = task.build_network()
        tensors = flat(quantizable_weights(model, cfg["quantize"]["exclude"], task.patterns))
        for t in tensors.values():
            t.requires_grad_(True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def loss():
            return sum(task.loss(task.forward(model, batch), batch).values())

        regularizer = FisherTrace(1e-3, task.critical_loss)

        def step(regularized: bool = False):
            optimizer.zero_grad()
            outputs = task.forward(model, batch)
            total = sum(task.loss(outputs, batch).values())
            if regularized:
                total = total + regularizer(model, outputs, batch)
            total.backward()
            optimizer.step()
        model.train()
        costs = {"training step": median_seconds(step, args.repeats),
                 "training step + Fisher-trace regularizer": median_seconds(lambda: step(True), args.repeats)}
        model.eval()
        with torch.no_grad():
            teacher = task.forward(model, batch)
        costs |= {
            "Hutchinson sample, loss": median_seconds(lambda: hutchinson_traces(tensors, [loss], 1), args.repeats),
            "Hutchinson sample, distillation": median_seconds(
                lambda: hutchinson_traces(tensors, [lambda: task.distillation_loss(task.forward(model, batch), teacher)], 1),
                args.repeats),
            "Fisher sample": median_seconds(lambda: fisher_traces(tensors, [loss]), args.repeats),
        }
    base = costs["training step"]
    print(f"DETR mini, one {tuple(batch['image'].shape[-2:])} image, {len(tensors)} weight tensors, "
          f"{args.threads} threads (median of {args.repeats}):")
    for name, seconds in costs.items():
        print(f"  {name:<42} {seconds * 1000:8.1f} ms/image   {seconds / base:5.2f} x training step")

    layers = quantizable_weights(DETR(), cfg["quantize"]["exclude"], task.patterns)
    counts = {name: sum(t.numel() for t in ts) for name, ts in layers.items()}
    generator = torch.Generator().manual_seed(0)
    print(f"ILP on DETR-R50: {len(counts)} layers, {sum(counts.values()) / 1e6:.1f}M weights")
    for target, (low, high) in sorted(cfg["ptq"]["ranges"].items(), reverse=True):
        sens = {name: {b: float(torch.rand((), generator=generator)) * 4.0 ** -b for b in range(low, high + 1)}
                for name in counts}
        seconds = median_seconds(lambda: average_bits(sens, counts, float(target)), args.repeats)
        print(f"  {target} bits (layers {low}..{high}): {seconds * 1000:.1f} ms")


if __name__ == "__main__":
    main()
