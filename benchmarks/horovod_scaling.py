"""Training throughput of 2 ranks vs 1 on the Widedepth mini profile, for both backends
(Horovod under horovodrun, torch.distributed under torchrun), with the knobs of
`engine.horovod` swept one at a time, beside the machine's own two-process ratio.

    .venv/bin/python benchmarks/horovod_scaling.py [--epochs 5] [--quick]

Every run is a real `horovodrun` or `torchrun` job on a throw-away storage root (logs/
stays clean), one torch thread per rank; the first epoch (warm-up) is skipped and images/s
is the mean of the rest. Ratios are against `1 rank` with the defaults, and for torchrun
also against its own one-rank run. The machine's ratio is two
independent single-thread processes (a conv forward + backward loop, no Horovod) over
one: what two ranks could reach if nothing but compute mattered.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"epoch (\d+)/\d+: [^(]*\(([\d.]+)s, ([\d.]+) img/s, peak (\d+) MiB\)")

#: (label, ranks, controller (torchrun: the torchrun launcher), config overrides, what it shows)
RUNS = [
    ("1 rank", 1, "mpi", [], "baseline"),
    ("2 ranks", 2, "mpi", [], "defaults (mpi_wait auto: yield on CPU)"),
    ("2 ranks, MPI busy-polling", 2, "mpi", ["engine.horovod.mpi_wait=spin"], "Open MPI's default on a full node"),
    ("2 ranks, gloo", 2, "gloo", [], "Horovod's Gloo controller"),
    ("2 ranks, cycle 0.2 ms", 2, "mpi", ["engine.horovod.cycle_time_ms=0.2"], ""),
    ("2 ranks, cycle 5 ms", 2, "mpi", ["engine.horovod.cycle_time_ms=5"], ""),
    ("2 ranks, fusion 0 MiB", 2, "mpi", ["engine.horovod.fusion_threshold_mb=0"], "no tensor fusion"),
    ("2 ranks, fp16 gradients", 2, "mpi", ["engine.horovod.compression=fp16"], ""),
    ("2 ranks, 2 passes/step", 2, "mpi", ["engine.horovod.backward_passes_per_step=2"], "half the allreduces"),
    ("2 ranks, 1 loader worker", 2, "mpi", ["engine.workers=1"], "augmentation off the main process"),
    ("torchrun: 1 rank", 1, "torchrun", [], "torch.distributed (gloo)"),
    ("torchrun: 2 ranks", 2, "torchrun", [], "torch.distributed (gloo)"),
    ("torchrun: 2 ranks, fp16 gradients", 2, "torchrun", ["engine.horovod.compression=fp16"], ""),
]
QUICK = {"1 rank", "2 ranks", "2 ranks, MPI busy-polling", "torchrun: 1 rank", "torchrun: 2 ranks"}


def train(ranks: int, controller: str, sets: list[str], epochs: int, storage: Path,
          problem: tuple[str, str] = ("SwissCube", "Widedepth")) -> dict:
    """One horovodrun or torchrun training job; images/s and seconds per epoch after the
    first, rank 0's peak RSS."""
    launcher = ([str(REPO / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc_per_node", str(ranks)] if controller == "torchrun"
                else [str(REPO / ".venv" / "bin" / "horovodrun"), "-np", str(ranks), "-H", f"localhost:{ranks}",
                      f"--{controller}", sys.executable])
    cmd = [*launcher, str(REPO / "main.py"), "--problem", problem[0], "--topology", problem[1],
           "--set", f"training.epochs={epochs}", "--set", "engine.eval_every=0", "--set", "engine.threads=1"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"{ranks} rank(s) {sets}: exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
    found = LINE.findall(out.stdout)
    timed = [(float(s), float(r)) for _, s, r, _ in found][1:]
    return {"images_per_s": sum(r for _, r in timed) / len(timed),
            "seconds_per_epoch": sum(s for s, _ in timed) / len(timed),
            "peak_rss_mib": max(float(m) for *_, m in found), "wall_s": wall}


def machine_ratio(seconds: float = 4.0) -> float:
    """Total conv steps/s of two independent single-thread processes over one."""
    code = ("import time, torch\ntorch.set_num_threads(1)\nc = torch.nn.Conv2d(16, 16, 3, padding=1)\n"
            "x = torch.randn(8, 16, 64, 64, requires_grad=True)\nf = lambda: c(x).sum().backward()\n"
            "[f() for _ in range(5)]\nt = time.perf_counter(); n = 0\n"
            f"while time.perf_counter() - t < {seconds}: f(); n += 1\nprint(n / (time.perf_counter() - t))\n")

    def rate(processes: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
                 for _ in range(processes)]
        return sum(float(p.communicate()[0]) for p in procs)
    return rate(2) / rate(1)


def measure(epochs: int, quick: bool = False) -> list[dict]:
    """Rows: label, ranks, images_per_s, seconds_per_epoch, peak_rss_mib (rank 0), ratio
    (images/s over `1 rank`'s; for the machine row, its two-process ratio) and note."""
    rows = [{"label": "machine: 2 processes / 1", "ranks": 2, "images_per_s": None, "seconds_per_epoch": None,
             "peak_rss_mib": None, "ratio": machine_ratio(), "note": "independent conv loops, no Horovod"}]
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        (storage / "hard_storage.json").write_text(json.dumps({"data": str(REPO / "data"), "logs": "logs"}))
        base = own = None
        for label, ranks, controller, sets, note in RUNS:
            if quick and label not in QUICK:
                continue
            row = {"label": label, "ranks": ranks, "images_per_s": None, "seconds_per_epoch": None,
                   "peak_rss_mib": None, "ratio": None, "note": note}
            try:
                row.update({k: v for k, v in train(ranks, controller, sets, epochs, storage).items() if k != "wall_s"})
            except (RuntimeError, ZeroDivisionError, ValueError) as exc:
                row["note"] = f"failed: {exc}"
            if label == "1 rank":
                base = row["images_per_s"]
            if label == "torchrun: 1 rank":
                own = row["images_per_s"]
            if base and row["images_per_s"]:
                row["ratio"] = row["images_per_s"] / base
            if label.startswith("torchrun: 2") and own and row["images_per_s"]:
                row["note"] = f"{row['note']}; x{row['images_per_s'] / own:.2f} its own 1 rank".lstrip("; ")
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="only 1 and 2 ranks per backend, and 2 ranks busy-polling")
    args = p.parse_args()
    for r in measure(args.epochs, args.quick):
        shown = "" if r["images_per_s"] is None else (
            f"{r['images_per_s']:7.1f} img/s  {r['seconds_per_epoch']:5.2f} s/epoch  peak {r['peak_rss_mib']:4.0f} MiB  ")
        ratio = "" if r["ratio"] is None else f"x{r['ratio']:.2f}  "
        print(f"{r['label']:<34} {shown}{ratio}{r['note']}")


if __name__ == "__main__":
    main()
