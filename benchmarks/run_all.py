"""Every benchmark in one run, written as markdown to benchmarks/results/<machine>-<date>.md.

    .venv/bin/python benchmarks/run_all.py [--quick] [--skip paper scaling ...] [--device cpu] [--previous FILE]
                                           [--threads 2] [--out benchmarks/results]

The file starts with the machine (CPU, logical cores, memory, GPU, torch, Horovod, Python),
the thread count and the command line, then:
  (a) QAT step over float step per topology x size x variant, with ms/step (qat_step.py)
  (b) evaluation images/s, float and lsq_wa (the same qat_step.py runs)
  (c) our fake quantizers against PyTorch's fused ops, on the CPU (fake_quant.py)
  (d) 2 Horovod ranks against 1, with peak memory per rank (horovod_scaling.py)
  (e) COCO evaluation of a val2017-size set, pycocotools against ours (coco_eval.py)
With `--previous FILE` (an earlier results file), each table's main figures get the earlier
run's beside them (previous.py).
A measurement that fails puts its one-line reason in its row (the traceback goes to stderr)
and the others still run; the file is rewritten after each section, so an interrupted run
keeps what it measured. A name already taken gets a number (<machine>-<date>-2.md).
`--skip` takes sections (qat, fake_quant, scaling, coco_eval), sizes (mini, paper), topologies
(Widedepth, ZebraPose, DETR) and variants other than float (symmetric, lsq_w, lsq_wa, lsq_wa_eager, inq:
at paper sizes INQ's level search alone takes minutes per topology on a CPU).
Settings: mini 9 rounds x 10 steps, paper 3 rounds x 2 steps, fake quant 20 repeats,
scaling 5 epochs; `--quick` (a smoke run): mini only, 2 rounds x 2 steps, 3 repeats, 2 epochs.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import re
import shlex
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from previous import beside, tables  # noqa: E402  (benchmarks/, the script's folder)
from tables import markdown  # noqa: E402

from quantlab.deploy.measure import cpu_name  # noqa: E402

SECTIONS = ("qat", "fake_quant", "scaling", "coco_eval")
TOPOLOGIES = ("Widedepth", "ZebraPose", "DETR")
SIZES = ("mini", "paper")
SKIPPABLE_VARIANTS = ("symmetric", "lsq_w", "lsq_wa", "lsq_wa_eager", "inq")
#: what a measurement may raise and the run survives (horovod_scaling once exited on failure)
FAILURES = (Exception, SystemExit)
STEP_COLUMNS = ["topology", "size", "batch", "image", "variant", "ms_per_step", "ratio_vs_float", "ratio_range",
                "setup_s", "note"]
EVAL_COLUMNS = ["topology", "size", "batch", "image", "float_images_per_s", "lsq_wa_images_per_s",
                "lsq_wa_over_float", "note"]


@dataclass(frozen=True)
class Settings:
    qat: dict[str, tuple[int, int]]  # size -> (rounds, steps)
    repeats: int                     # fake quantization
    epochs: int                      # Horovod scaling
    coco_images: int                 # COCO evaluation


FULL = Settings({"mini": (9, 10), "paper": (3, 2)}, repeats=20, epochs=5, coco_images=5000)
QUICK = Settings({"mini": (2, 2)}, repeats=3, epochs=2, coco_images=200)


def reason(exc: BaseException) -> str:
    """The one line a table row gives a failure."""
    lines = str(exc).strip().splitlines()
    return f"failed: {type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def attempt(work: Callable[[], object], what: str) -> tuple[object | None, str | None]:
    """(result, None), or (None, the failure's reason) with the traceback on stderr."""
    print(f"running {what}", flush=True)
    try:
        return work(), None
    except FAILURES as exc:
        traceback.print_exc()
        print(f"{what} {reason(exc)}", file=sys.stderr, flush=True)
        return None, reason(exc)


def memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2 ** 20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def gpus() -> list[str]:
    """Name and memory of each CUDA device."""
    if not torch.cuda.is_available():
        return []
    return [f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2 ** 30:.0f} GiB)"
            for i in range(torch.cuda.device_count())]


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(threads: int, device: str) -> str:
    """The machine section: what the numbers were measured on, and how the run was started."""
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join([
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores",
        f"- memory: {memory_gib()}",
        f"- GPU: {'; '.join(gpus()) or 'none'}",
        f"- torch {torch.__version__}, Horovod {version('horovod')}, Python {platform.python_version()}",
        f"- threads: {threads}, device: {device}",
        f"- load average at the start (1, 5, 15 min): {load}; other work on the machine skews the timings",
        f"- command: `{command}`",
    ])


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "machine"


def output_path(folder: Path) -> Path:
    """<machine>-<date>.md in `folder`, numbered when taken; the machine is the CPU model and
    the first GPU's name."""
    names = [cpu_name()] + ([torch.cuda.get_device_name(0)] if torch.cuda.is_available() else [])
    stem = f"{slug(' '.join(names))}-{datetime.date.today().isoformat()}"
    path, n = folder / f"{stem}.md", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}.md", n + 1
    return path


def qat_tables(settings: Settings, skip: set[str], device: str, threads: int, earlier: tuple | None
               ) -> tuple[str, str]:
    """Sections (a) and (b): one qat_step measurement per topology and size."""
    steps_rows, eval_rows = [], []
    qat_step, failure = attempt(lambda: importlib.import_module("qat_step"), "import qat_step")
    variants = ["float", *(v for v in SKIPPABLE_VARIANTS if v not in skip)]
    for topology in TOPOLOGIES:
        for size, (rounds, steps) in settings.qat.items():
            if topology in skip or size in skip:
                continue
            where = {"topology": topology, "size": size}
            result, error = (None, failure) if qat_step is None else attempt(
                lambda: qat_step.measure(topology, size, steps, rounds, threads, device, variants=variants),
                f"qat_step {topology} {size} ({rounds} rounds x {steps} steps)")
            if result is None:
                steps_rows.append({**where, "note": error})
                eval_rows.append({**where, "note": error})
                continue
            shape = {**where, "batch": result["batch"], "image": result["image"]}
            for name, v in result["variants"].items():
                steps_rows.append({**shape, "variant": name, "ms_per_step": v["ms_per_step"],
                                   "ratio_vs_float": v["ratio"],
                                   "ratio_range": f"{v['ratio_min']:.2f}-{v['ratio_max']:.2f}", "setup_s": v["setup_s"]})
            rates = result["eval_images_per_s"]
            eval_rows.append({**shape, "float_images_per_s": rates.get("float"),
                              "lsq_wa_images_per_s": rates.get("lsq_wa"),
                              "lsq_wa_over_float": rates["lsq_wa"] / rates["float"] if "lsq_wa" in rates else None})
    runs = ", ".join(f"{size} {r} rounds x {s} steps" for size, (r, s) in settings.qat.items() if size not in skip)
    head = (f"A step is forward + loss + backward + AdamW on one batch; the ratio is the median over rounds of "
            f"(variant / float in that round), its range beside it ({runs}). Setup (build, calibration, INQ's "
            "level search) is not in the step.\n\n")
    evaluation = ("The task's forward in eval mode under no_grad, on a batch of as many images from the "
                  "evaluation split as the training batch.\n\n")
    steps = markdown(*beside("(a) QAT step / float step", steps_rows, STEP_COLUMNS, earlier))
    rates = markdown(*beside("(b) Evaluation throughput", eval_rows, EVAL_COLUMNS, earlier))
    return head + steps, evaluation + rates


def fake_quant_table(settings: Settings, threads: int, earlier: tuple | None) -> tuple[str]:
    """Section (c)."""
    rows, error = attempt(lambda: importlib.import_module("fake_quant").measure(threads, settings.repeats),
                          "fake_quant")
    head = (f"CPU, {threads} threads, median of {settings.repeats}. `past_bound`: entries within half a step "
            "past a bound, where PyTorch passes the x gradient and LSQ clips it; `x_grad_cut_differ`: entries "
            "whose x gradient one passes and the other cuts.\n\n")
    table = markdown(*beside("(c) Fake quantization: ours vs PyTorch's fused ops",
                             rows if rows is not None else [{"op": "-", "note": error}], None, earlier))
    return (head + table,)


def scaling_table(settings: Settings, earlier: tuple | None) -> tuple[str]:
    """Section (d): horovod_scaling's rows as they come, columns from their keys."""
    rows, error = attempt(lambda: importlib.import_module("horovod_scaling").measure(settings.epochs),
                          f"horovod_scaling ({settings.epochs} epochs)")
    table = markdown(*beside("(d) Horovod: 2 ranks vs 1, peak memory per rank",
                             rows if rows is not None else [{"label": "-", "note": error}], None, earlier))
    return (f"{settings.epochs} epochs a run.\n\n{table}",)


def coco_table(settings: Settings) -> tuple[str]:
    """Section (e)."""
    row, error = attempt(lambda: importlib.import_module("coco_eval").measure(settings.coco_images),
                         f"coco_eval ({settings.coco_images} images)")
    head = ("A synthetic set with val2017's counts (coco_eval.py), the metrics and the bootstrap's per-image "
            "matches: pycocotools' COCOeval against ours (faster-coco-eval's metrics, problems/COCO/matching.py's "
            "matches); `max_metric_difference`: of the six summary metrics, in percent points.\n\n")
    return (head + markdown([row] if row is not None else [{"images": settings.coco_images, "note": error}]),)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: mini sizes, few rounds, steps and epochs")
    p.add_argument("--skip", nargs="+", default=[], choices=[*SECTIONS, *SIZES, *TOPOLOGIES, *SKIPPABLE_VARIANTS],
                   metavar="NAME", help=f"any of {', '.join([*SECTIONS, *SIZES, *TOPOLOGIES, *SKIPPABLE_VARIANTS])}")
    p.add_argument("--device", default="cpu", help="of the QAT steps and evaluation (fake quantization: CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder of the markdown file")
    p.add_argument("--previous", type=Path, help="an earlier results file whose figures go beside this run's")
    args = p.parse_args()
    earlier = tables(args.previous) if args.previous else None
    settings, skip = (QUICK if args.quick else FULL), set(args.skip)
    args.out.mkdir(parents=True, exist_ok=True)
    path = output_path(args.out)
    parts = {"Machine": machine(args.threads, args.device)}
    titles = {"qat": ("(a) QAT step / float step", "(b) Evaluation throughput"),
              "fake_quant": ("(c) Fake quantization: ours vs PyTorch's fused ops",),
              "scaling": ("(d) Horovod: 2 ranks vs 1, peak memory per rank",),
              "coco_eval": ("(e) COCO evaluation: pycocotools vs ours",)}
    runs = {"qat": lambda: qat_tables(settings, skip, args.device, args.threads, earlier),
            "fake_quant": lambda: fake_quant_table(settings, args.threads, earlier),
            "scaling": lambda: scaling_table(settings, earlier),
            "coco_eval": lambda: coco_table(settings)}

    def save() -> None:
        text = f"# Benchmarks, {datetime.date.today().isoformat()}\n"
        path.write_text(text + "".join(f"\n## {title}\n\n{body}\n" for title, body in parts.items()))
    save()
    for section in SECTIONS:
        bodies = [f"skipped (`--skip {section}`)"] * len(titles[section]) if section in skip else runs[section]()
        parts.update(zip(titles[section], bodies))
        save()
    print(os.path.relpath(path))


if __name__ == "__main__":
    main()
