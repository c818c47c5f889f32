"""Time per training step of QAT over float, on the Widedepth `mini` model, in one run.

    .venv/bin/python benchmarks/qat_step.py [--steps 10] [--rounds 9] [--threads 2] [--device cpu]
                                            [--set network.width=0.5 ...]

Variants (first and last layers stay float, as in the recipes):
  float     the float network
  lsq       LSQ 4-bit weights + LSQ 8-bit activations (calibrated first) on every other layer
  inq       INQ 4-bit weights on every other layer, half frozen, with the controller's
            per-step clearing of frozen optimizer state
A step is forward + loss + backward + AdamW step on one mini batch (8 images, 128 px) from
a small synthetic set. Variants are interleaved over rounds and the median step is used,
so drift of the machine hits all of them alike; the ratio is the median over rounds of
(variant / float in that round), printed with its range. `--set` takes config overrides
(e.g. a wider network, to see how the ratio falls as convolutions outweigh quantizers).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from problems.SwissCube.Widedepth import build_task  # noqa: E402
from quantlab.engine.config import build_config  # noqa: E402
from quantlab.modes import config_files  # noqa: E402
from quantlab.engine.task import to_device  # noqa: E402
from quantlab.quant.calibration import calibrate  # noqa: E402
from quantlab.quant.controllers import INQController  # noqa: E402
from quantlab.quant.editing import Rule, apply_recipe  # noqa: E402

RECIPES = {
    "float": [],
    "lsq": [Rule(g, "lsq", 4, act_algorithm="lsq", act_bits=8, act_signed=True) for g in ("backbone", "fpn", "head")],
    "inq": [Rule(g, "inq", 4) for g in ("backbone", "fpn", "head")],
}


def make_variant(task, name: str, batch: dict, device: torch.device):
    torch.manual_seed(0)
    model = task.build_network()
    controller = None
    if RECIPES[name]:
        apply_recipe(model, RECIPES[name], task.patterns, ["first_last"])
    model.to(device).train()
    if name == "lsq":
        calibrate(model, [batch], task.forward)
    if name == "inq":
        controller = INQController(model, {0: 0.5})
        controller.on_epoch_start(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, optimizer, controller


def step(task, model, optimizer, controller, batch) -> None:
    loss = sum(task.loss(task.forward(model, batch), batch).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if controller is not None:
        controller.after_step(optimizer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        sets = ["data.root=bench", "data.synthetic.params.images={train: 16, validation: 4, test: 4}",
                "data.synthetic.params.images_per_sequence=8", *args.overrides]
        cfg = build_config(config_files(), REPO / "problems" / "SwissCube" / "Widedepth" / "config.yaml", "mini",
                           sets)
        task = build_task(cfg, Path(tmp))
        task.prepare_data()
        data = task.dataset("train", train=True)
        batch = to_device(task.collate([data[i] for i in range(cfg["training"]["batch_size"])]), device)
        variants = {name: make_variant(task, name, batch, device) for name in RECIPES}
        times: dict[str, list[float]] = {name: [] for name in RECIPES}
        for name, parts in variants.items():  # warm-up
            for _ in range(3):
                step(task, *parts, batch)
        for _ in range(args.rounds):
            for name, parts in variants.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(task, *parts, batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) / args.steps)
    print(f"Widedepth mini (width {cfg['network']['width']}), batch {cfg['training']['batch_size']} x "
          f"{cfg['input']['size']} px, {device}, {args.threads} threads, {args.rounds} rounds x {args.steps} steps")
    for name, values in times.items():
        ratios = sorted(v / f for v, f in zip(values, times["float"]))
        print(f"  {name:>5}: {1000 * statistics.median(values):7.1f} ms/step   ratio vs float "
              f"{statistics.median(ratios):.2f} (rounds: {ratios[0]:.2f}-{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
