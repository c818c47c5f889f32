"""Training throughput of `-np 2` vs `-np 1` on the mini profile, time per epoch, peak memory.

    .venv/bin/python benchmarks/horovod_scaling.py [--epochs 4] [--threads 1]

Runs real `horovodrun` jobs on a throw-away storage root (so logs/ stays clean), skips the
first epoch (warm-up) and prints the measured ratio. Per-rank threads are fixed so the two
runs use the same per-process settings: with 2 cores, -np 1 --threads 2 is also printed as
the fair single-process baseline.
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


def run(ranks: int, threads: int, epochs: int, storage: Path, controller: str = "mpi") -> dict:
    cmd = [str(REPO / ".venv" / "bin" / "horovodrun"), "-np", str(ranks), "-H", f"localhost:{ranks}", f"--{controller}",
           sys.executable, str(REPO / "main.py"), "--problem", "SwissCube", "--topology", "Widedepth",
           "--set", f"training.epochs={epochs}", "--set", "engine.eval_every=0",
           "--set", f"engine.threads={threads}"]
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"run with {ranks} rank(s) failed:\n{out.stderr[-3000:]}")
    found = LINE.findall(out.stdout)
    epochs_seen = [(float(s), float(r)) for _, s, r, _ in found][1:]
    return {"ranks": ranks, "threads_per_rank": threads, "controller": controller,
            "images_per_s": sum(r for _, r in epochs_seen) / len(epochs_seen),
            "seconds_per_epoch": sum(s for s, _ in epochs_seen) / len(epochs_seen),
            "wall_s": wall, "peak_rss_mib": max(float(m) for *_, m in found)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        data = REPO / "data"
        (storage / "hard_storage.json").write_text(json.dumps({"data": str(data), "logs": "logs"}))
        results = [run(1, args.threads, args.epochs, storage), run(2, args.threads, args.epochs, storage),
                   run(1, 2 * args.threads, args.epochs, storage),
                   run(2, args.threads, args.epochs, storage, controller="gloo")]
    for r in results:
        print(f"-np {r['ranks']} x {r['threads_per_rank']} thread(s), {r['controller']:>4}: {r['images_per_s']:7.1f} img/s, "
              f"{r['seconds_per_epoch']:.2f} s/epoch, peak RSS (rank 0) {r['peak_rss_mib']:.0f} MiB, wall {r['wall_s']:.0f} s")
    one, two, fair, gloo = results
    print(f"ratio -np 2 / -np 1 (same threads per rank): {two['images_per_s'] / one['images_per_s']:.2f}")
    print(f"ratio -np 2 / -np 1 (same cores in total):   {two['images_per_s'] / fair['images_per_s']:.2f}")
    print(f"ratio -np 2 gloo / -np 1 (same cores in total): {gloo['images_per_s'] / fair['images_per_s']:.2f}")


if __name__ == "__main__":
    main()
