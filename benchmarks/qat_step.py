"""Time per training step of QAT over float, and evaluation throughput, of one topology at its
`mini` size or at the paper's layer sizes, in one run.

    .venv/bin/python benchmarks/qat_step.py [--topology Widedepth|ZebraPose|DETR] [--size mini|paper]
                                            [--steps 10] [--rounds 9] [--threads 2] [--device cpu]
                                            [--variants float lsq_w ...] [--set network.width=0.5 ...]
                                            [--compile]

Sizes, each on a tiny synthetic set generated into a temporary folder:
  mini   the topology's `mini` profile: Widedepth 8 x 128 px; ZebraPose 16 items of one 64 px
         crop per object (32 crops); DETR 8 x 96 px
  paper  the paper's layer sizes on a batch a CPU can run: Widedepth (width 1, FPN 256, 4 head
         convs, GN 32, anchors 32-512) on 1 x 512 px; ZebraPose's ResNet-34 network for one
         object on 2 crops of 256 px (the BatchNorm after ASPP's image pooling needs 2; 10-bit
         codes, the most the synthetic meshes carry, instead of 16);
         DETR-R50 (hidden 256, 6 + 6 layers, FFN 2048, 100 queries) on 1 x 512 px
Variants quantize every group of the topology's quantize.GROUPS that its config does not
exclude; the first and last layers stay float as in the recipes (`first_last`, where the
topology names it, and the config's `quantize.exclude`: DETR's heads).
  float      the float network
  symmetric  symmetric max-abs 4-bit weights
  lsq_w      LSQ 4-bit weights
  lsq_wa     LSQ 4-bit weights + LSQ 8-bit signed activations (calibrated on the batch first)
  lsq_wa_eager  lsq_wa with the eager quantizers (`engine.fused_quantizers: false`): a pass
             per op, the code of the rounds before the fused kernels
  inq        INQ 4-bit weights, half frozen, with the controller's per-step clearing of
             frozen optimizer state
A step is forward + loss + backward + AdamW (foreach) step on one batch. Variants are
interleaved over rounds after up to 3 warm-up steps, and the median step is used, so drift
of the machine hits all of them alike; the ratio is the median over rounds of (variant /
float in that round), printed with its range. Evaluation: images/s of the task's forward in
eval mode under no_grad, on a batch of as many images from the evaluation split, float and
lsq_wa (median of `rounds` repeats, at least 3). Setup (building, calibration, INQ's level
search: 15-20 us a weight on a 2-core CPU, so 8-15 minutes at paper sizes, where
`--variants` can leave inq out) is printed, not timed in the step. `--set` takes config
overrides (e.g. a wider network, to see how the ratio falls as convolutions outweigh
quantizers). `--compile` compiles every variant as `engine.compile` does; the setup then
includes the compiling first step, and the ratios are compiled variant over compiled float.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timing import median_seconds  # noqa: E402  (benchmarks/, the script's folder)

from quantlab.engine.config import build_config  # noqa: E402
from quantlab.engine.task import Task, to_device  # noqa: E402
from quantlab.modes import config_files  # noqa: E402
from quantlab.quant import fused  # noqa: E402
from quantlab.quant.calibration import calibrate  # noqa: E402
from quantlab.quant.algorithms.inq import INQController  # noqa: E402
from quantlab.quant.editing import Rule, apply_recipe  # noqa: E402

#: topology -> its problem and, per size, the --set overrides on the profile of that name
#: (the data root is a temporary folder; the synthetic sets stay a few images)
TOPOLOGIES: dict[str, tuple[str, dict[str, list[str]]]] = {
    "Widedepth": ("SwissCube", {
        "mini": ["data.synthetic.params.images={train: 16, validation: 4, test: 4}",
                 "data.synthetic.params.images_per_sequence=8"],
        "paper": ["network.width=1.0", "network.depth=1.0", "network.fpn_channels=256", "network.head_convs=4",
                  "network.gn_groups=32", "network.anchor_sizes=[32.0, 64.0, 128.0, 256.0, 512.0]",
                  "input.size=512", "data.synthetic.params.image_size=512",
                  "data.synthetic.params.images={train: 2, validation: 1, test: 2}",
                  "data.synthetic.params.images_per_sequence=2", "training.batch_size=1"],
    }),
    "ZebraPose": ("LINEMOD", {
        "mini": ["data.synthetic.params.images={train_pbr: 8, test: 4}"],
        # the synthetic set holds `ape` and `eggbox` and no train_real split, and its meshes
        # (1158 vertices) carry 10-bit codes at most: the last layer has 11 outputs, not 17
        "paper": ["network.width=1.0", "network.blocks=[3, 4, 6, 3]", "network.code_bits=10", "input.size=256",
                  "data.objects=[ape]", "data.train_sources={train_pbr: 1.0}", "data.synthetic.params.bits=10",
                  "data.synthetic.params.images={train_pbr: 2, test: 2}", "training.batch_size=2"],
    }),
    "DETR": ("COCO", {
        "mini": ["data.synthetic.params.images={train: 16, val: 4}"],
        "paper": ["network.backbone=resnet50", "network.norm=frozen", "network.hidden=256", "network.heads=8",
                  "network.encoder_layers=6", "network.decoder_layers=6", "network.ffn=2048",
                  "network.queries=100", "input.train_scales=[512]", "input.max_size=512", "input.val_size=512",
                  "input.crop=false", "data.synthetic.params.image_size=512",
                  "data.synthetic.params.images={train: 2, val: 2}", "training.batch_size=1"],
    }),
}
SIZES = ("mini", "paper")
#: variant -> the Rule of each quantized group, after its `modules` (None: the float network)
VARIANTS: dict[str, dict | None] = {
    "float": None,
    "symmetric": {"algorithm": "symmetric", "bits": 4},
    "lsq_w": {"algorithm": "lsq", "bits": 4},
    "lsq_wa": {"algorithm": "lsq", "bits": 4, "act_algorithm": "lsq", "act_bits": 8, "act_signed": True},
    "inq": {"algorithm": "inq", "bits": 4},
}
VARIANTS["lsq_wa_eager"] = VARIANTS["lsq_wa"]  # the same recipe, run with the eager quantizers
#: the variants that run the eager quantizers (quantlab.quant.fused off)
EAGER = ("lsq_wa_eager",)
#: the variants whose evaluation throughput is measured
EVALUATED = ("float", "lsq_wa")
WARMUP_STEPS = 3
Parts = tuple[torch.nn.Module, torch.optim.Optimizer, INQController | None]


def configure(topology: str, size: str, overrides: Sequence[str]) -> tuple[dict, Callable]:
    """The config of `topology` at `size` (with `overrides` last) and its build_task."""
    problem, sizes = TOPOLOGIES[topology]
    cfg = build_config(config_files(), REPO / "problems" / problem / topology / "config.yaml", size,
                       ["data.root=bench", *sizes[size], *overrides])
    return cfg, importlib.import_module(f"problems.{problem}.{topology}").build_task


def exclusions(task: Task, cfg: dict) -> list[str]:
    """What stays float: the config's `quantize.exclude` and the first and last layers where
    the topology names them (`first_last`)."""
    return [*cfg["quantize"]["exclude"], *(["first_last"] if "first_last" in task.patterns else [])]


def make_variant(task: Task, name: str, exclude: list[str], batch: dict, device: torch.device) -> Parts:
    """A freshly built network (same seed for all variants) with `name`'s recipe applied,
    calibrated or half frozen as the variant needs, and its AdamW."""
    torch.manual_seed(0)
    model = task.build_network()
    controller = None
    if VARIANTS[name] is not None:
        rules = [Rule(g, **VARIANTS[name]) for g in task.groups if g not in exclude]
        apply_recipe(model, rules, task.patterns, exclude)
    model.to(device).train()
    if VARIANTS[name] is not None and VARIANTS[name].get("act_algorithm"):
        calibrate(model, [batch], task.forward)
    if name == "inq":
        controller = INQController(model, {0: 0.5})
        controller.on_epoch_start(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    return model, optimizer, controller


def step(task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer, controller: INQController | None,
         batch: dict) -> None:
    loss = sum(task.loss(task.forward(model, batch), batch).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if controller is not None:
        controller.after_step(optimizer)


@contextlib.contextmanager
def quantizers_of(name: str) -> Iterator[None]:
    """The fused quantizers from the first call (the steady state of a long run; main.py
    quantizes a process's first 2^30 elements eagerly), or the eager ones for EAGER."""
    fused.configure(name not in EAGER, warmup_elements=0)
    try:
        yield
    finally:
        fused.configure(True, warmup_elements=0)


def sync(device: torch.device) -> None:
    """Wait for the device, so a CUDA time covers its kernels, not just their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(task: Task, variants: dict[str, Parts], batch: dict, steps: int, rounds: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of each variant in each round; the variants take turns in a round."""
    for name, parts in variants.items():
        with quantizers_of(name):
            for _ in range(min(WARMUP_STEPS, steps)):
                step(task, *parts, batch)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, parts in variants.items():
            with quantizers_of(name):
                sync(device)
                start = time.perf_counter()
                for _ in range(steps):
                    step(task, *parts, batch)
                sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return times


def images_per_s(task: Task, model: torch.nn.Module, batch: dict, repeats: int, device: torch.device) -> float:
    """Evaluation throughput: the task's forward in eval mode, no autograd."""
    model.eval()

    def forward() -> None:
        task.forward(model, batch)
        sync(device)
    with torch.no_grad():
        seconds = median_seconds(forward, repeats)
    return batch["image"].shape[0] / seconds


def batch_of(task: Task, split: str, train: bool, count: int, device: torch.device) -> dict:
    """The first `count` items of a split (repeated when it holds fewer), collated."""
    data = task.dataset(split, train=train)
    return to_device(task.collate([data[i % len(data)] for i in range(count)]), device)


def measure(topology: str, size: str, steps: int, rounds: int, threads: int, device: str,
            overrides: Sequence[str] = (), variants: Sequence[str] = tuple(VARIANTS), compiled: bool = False) -> dict:
    """Step times and ratios vs float of `variants` (float among them), and the evaluation
    images/s of those of EVALUATED, for `topology` at `size`."""
    if "float" not in variants:
        raise ValueError("the ratios are over float: `variants` must include it")
    torch.set_num_threads(threads)
    dev = torch.device(device)
    cfg, build_task = configure(topology, size, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        task = build_task(cfg, Path(tmp))
        task.prepare_data()
        batch = batch_of(task, "train", True, cfg["training"]["batch_size"], dev)
        count = batch["image"].shape[0]
        evaluation = batch_of(task, cfg["engine"]["eval_split"], False, count, dev)
        exclude = exclusions(task, cfg)
        built, setup = {}, {}
        for name in variants:
            start = time.perf_counter()
            built[name] = make_variant(task, name, exclude, batch, dev)
            if compiled:  # torch.compile as engine.compile does it; the first step compiles
                built[name][0].compile()
                step(task, *built[name], batch)
            setup[name] = time.perf_counter() - start
        times = interleaved(task, built, batch, steps, rounds, dev)
        rates = {name: images_per_s(task, built[name][0], evaluation, max(rounds, 3), dev)
                 for name in EVALUATED if name in built}
    results = {}
    for name, values in times.items():
        ratios = sorted(v / f for v, f in zip(values, times["float"]))
        results[name] = {"ms_per_step": 1000 * statistics.median(values), "ratio": statistics.median(ratios),
                         "ratio_min": ratios[0], "ratio_max": ratios[-1], "setup_s": setup[name]}
    return {"topology": topology, "problem": TOPOLOGIES[topology][0], "size": size, "batch": count,
            "image": "x".join(str(s) for s in batch["image"].shape[-2:]),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "threads": threads,
            "rounds": rounds, "steps": steps, "compiled": compiled, "variants": results, "eval_images_per_s": rates}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", choices=list(TOPOLOGIES), default="Widedepth")
    p.add_argument("--size", choices=SIZES, default="mini")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="a subset to time (float is always among them)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every variant, as engine.compile does (setup then includes compiling)")
    args = p.parse_args()
    variants = ["float", *(v for v in args.variants if v != "float")]
    r = measure(args.topology, args.size, args.steps, args.rounds, args.threads, args.device, args.overrides,
                variants, args.compile)
    print(f"{r['topology']} ({r['problem']}) {r['size']}: batch {r['batch']} x {r['image']} px, {r['device']}, "
          f"{r['threads']} threads, {r['rounds']} rounds x {r['steps']} steps" + (", compiled" if r["compiled"] else ""))
    for name, v in r["variants"].items():
        print(f"  {name:>12}: {v['ms_per_step']:8.1f} ms/step   ratio vs float {v['ratio']:.2f} "
              f"(rounds: {v['ratio_min']:.2f}-{v['ratio_max']:.2f})   setup {v['setup_s']:.1f} s")
    for name, rate in r["eval_images_per_s"].items():
        print(f"  eval {name:>6}: {rate:8.1f} images/s")


if __name__ == "__main__":
    main()
