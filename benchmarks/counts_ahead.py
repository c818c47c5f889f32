"""DETR training throughput, 2 ranks over 1, with the box count's all-reduce started a
batch ahead (`engine.counts_ahead: true`, the default) and inside each step (`false`),
for both launchers, measured side by side in one run (issue: one wait per step).

    .venv/bin/python benchmarks/counts_ahead.py [--epochs 3]

DETR's loss divides its box terms by the batch's box count averaged over ranks. Inside
the step, that all-reduce is a second wait per step beside the gradients'; started when
the batch is loaded, a batch ahead, it is done before the step asks. WDR and ZebraPose
average nothing in their losses: their steps wait once already. Each run is a real
horovodrun or torchrun job of the `mini` profile (one torch thread per rank); the first
epoch is skipped (horovod_scaling.train).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from horovod_scaling import REPO, machine_ratio, train  # noqa: E402

DETR = ("COCO", "DETR")
#: (label, ranks, launcher, counts_ahead)
RUNS = [("horovodrun: 1 rank", 1, "mpi", "true"),
        ("horovodrun: 2 ranks, counts inside the step", 2, "mpi", "false"),
        ("horovodrun: 2 ranks, counts a batch ahead", 2, "mpi", "true"),
        ("torchrun: 1 rank", 1, "torchrun", "true"),
        ("torchrun: 2 ranks, counts inside the step", 2, "torchrun", "false"),
        ("torchrun: 2 ranks, counts a batch ahead", 2, "torchrun", "true")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    print(f"{'machine: 2 processes / 1':<44} x{machine_ratio():.2f}  independent conv loops")
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        (storage / "hard_storage.json").write_text(json.dumps({"data": str(REPO / "data"), "logs": "logs"}))
        one: dict[str, float] = {}
        for label, ranks, launcher, ahead in RUNS:
            row = train(ranks, launcher, [f"engine.counts_ahead={ahead}"], args.epochs, storage, DETR)
            if ranks == 1:
                one[launcher] = row["images_per_s"]
            ratio = f"x{row['images_per_s'] / one[launcher]:.2f} its 1 rank" if ranks > 1 else "baseline"
            print(f"{label:<44} {row['images_per_s']:6.1f} img/s  {row['seconds_per_epoch']:6.2f} s/epoch  {ratio}",
                  flush=True)


if __name__ == "__main__":
    main()
