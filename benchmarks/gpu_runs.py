"""About a hundred training steps of each topology at the papers' layer sizes, through horovodrun
(gloo controller, NCCL all-reduce) and torchrun, one rank each: that main.py trains through both
launchers on the device, and at what rate. gpu_check.sh runs it on a GPU machine.

    python benchmarks/gpu_runs.py --horovodrun PATH [--device cuda] [--steps 100] [--append FILE]
                                  [--rehearsal]

Each run is `main.py --mode train` on a synthetic set of 64 training images generated once per
topology, with qat_step.py's `paper` overrides (the papers' network sizes, its batch sizes),
as many epochs as make `--steps` steps, an evaluation after the last epoch only, and no
numbered checkpoints. The table gives each run's exit status, wall seconds (start-up, data
loading and the evaluation included) and the images/s of its last epoch as main.py logs it.
`--rehearsal` runs the same flow at `mini` sizes for 2 epochs, to check the script on a CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from qat_step import TOPOLOGIES  # noqa: E402  (benchmarks/, the script's folder)
from tables import markdown  # noqa: E402

TRAIN_IMAGES = 64
SETS = {"Widedepth": f"data.synthetic.params.images={{train: {TRAIN_IMAGES}, validation: 1, test: 2}}",
        "ZebraPose": f"data.synthetic.params.images={{train_pbr: {TRAIN_IMAGES}, test: 2}}",
        "DETR": f"data.synthetic.params.images={{train: {TRAIN_IMAGES}, val: 2}}"}
EPOCH = re.compile(r"epoch (\d+)/(\d+): .*?\(([\d.]+)s, ([\d.]+) img/s")
TITLE = "(f) Training through the launchers"


def overrides(topology: str, device: str, steps: int, rehearsal: bool) -> list[str]:
    """The `--set` list of one run: paper sizes (or mini), the synthetic set, epochs for `steps`."""
    sizes = [] if rehearsal else [s for s in TOPOLOGIES[topology][1]["paper"]
                                  if not s.startswith("data.synthetic.params.images=")]
    batch = next((int(s.split("=")[1]) for s in sizes if s.startswith("training.batch_size=")), 8)
    epochs = 2 if rehearsal else max(1, math.ceil(steps / (TRAIN_IMAGES // batch)))
    return ["data.root=gpu-runs", *sizes, SETS[topology], f"training.epochs={epochs}", f"engine.device={device}",
            "engine.eval_every=0", "engine.save_every=0", "engine.select_split=none", "engine.threads=0"]


def command(launcher: str, horovodrun: str, topology: str, sets: list[str]) -> list[str]:
    problem = TOPOLOGIES[topology][0]
    main = [str(REPO / "main.py"), "--problem", problem, "--topology", topology, "--mode", "train",
            *(a for s in sets for a in ("--set", s))]
    if launcher == "horovodrun":
        return [horovodrun, "--gloo", "-np", "1", "-H", "localhost:1", sys.executable, *main]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *main]


def run(launcher: str, horovodrun: str, topology: str, sets: list[str], storage: Path, timeout: float) -> dict:
    """One training run: its exit status, seconds, steps and last epoch's images/s."""
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    try:
        out = subprocess.run(command(launcher, horovodrun, topology, sets), env=env, cwd=storage, text=True,
                             capture_output=True, timeout=timeout)
        status, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:  # its output may come as bytes even in text mode
        status, text = "timeout", "".join(o.decode(errors="replace") if isinstance(o, bytes) else o
                                          for o in (exc.stdout, exc.stderr) if o)
    except OSError as exc:
        status, text = "failed", str(exc)
    seconds = time.perf_counter() - start
    epochs = EPOCH.findall(text)
    row = {"topology": topology, "launcher": launcher, "exit": status, "seconds": seconds,
           "epochs": len(epochs), "last_epoch_images_per_s": float(epochs[-1][3]) if epochs else None}
    if status != 0:
        lines = [line for line in text.splitlines() if line.strip()]
        row["note"] = lines[-1][-200:] if lines else "no output"
    return row


def measure(horovodrun: str, device: str, steps: int, rehearsal: bool, timeout: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        (storage / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
        for topology in TOPOLOGIES:
            sets = overrides(topology, device, steps, rehearsal)
            for launcher in ("horovodrun", "torchrun"):
                print(f"training {topology} through {launcher}", flush=True)
                rows.append(run(launcher, horovodrun, topology, sets, storage, timeout))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--horovodrun", required=True, help="the horovodrun to launch with")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=100, help="training steps per run (rounded up to whole epochs)")
    p.add_argument("--timeout", type=float, default=150, help="seconds one run may take")
    p.add_argument("--append", type=Path, help="a results file to append the table to")
    p.add_argument("--rehearsal", action="store_true", help="mini sizes, 2 epochs: check the flow on a CPU")
    args = p.parse_args()
    rows = measure(str(Path(args.horovodrun).resolve()), args.device, args.steps, args.rehearsal, args.timeout)
    table = markdown(rows, ["topology", "launcher", "exit", "seconds", "epochs", "last_epoch_images_per_s", "note"])
    head = (f"main.py --mode train, 1 rank, {args.device}, {'mini' if args.rehearsal else 'paper'} sizes, "
            f"{TRAIN_IMAGES} synthetic training images, about {args.steps} steps a run (gpu_runs.py).\n\n")
    if args.append:
        with args.append.open("a") as fh:
            fh.write(f"\n## {TITLE}\n\n{head}{table}\n")
    print(table)


if __name__ == "__main__":
    main()
