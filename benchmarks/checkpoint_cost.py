"""What the per-epoch safety work costs against an epoch of training, on the `mini` models.

    .venv/bin/python benchmarks/checkpoint_cost.py [--rounds 7] [--threads 2]

Before each checkpoint the trainer compares the ranks' model digests and checks that the
model is sound (finite parameters and one finite forward pass on an evaluation sample); it
saves each epoch before evaluating it and, on evaluated epochs, again with the metrics.
Timed in one process on a small synthetic set: a training step (median), the snapshot
(digest + health check), and one checkpoint write (`last.pt`, fsynced, with its links).
The ratios are over one `mini` epoch of steps on 2 ranks: snapshot + 1 write for an epoch
that is not evaluated, snapshot + 2 writes for one that is.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timing import median_seconds  # noqa: E402  (benchmarks/, the script's folder)

from quantlab.engine import distributed as dist  # noqa: E402
from quantlab.engine.config import build_config  # noqa: E402
from quantlab.engine.context import RunContext  # noqa: E402
from quantlab.engine.logbook import Logbook  # noqa: E402
from quantlab.engine.task import to_device  # noqa: E402
from quantlab.engine.trainer import Trainer  # noqa: E402
from quantlab.modes import config_files  # noqa: E402

TOPOLOGIES = {  # synthetic sets small enough to generate in seconds, at the mini image size
    "SwissCube/Widedepth": ["data.synthetic.params.images={train: 16, validation: 2, test: 2}",
                            "data.synthetic.params.images_per_sequence=8"],
    "COCO/DETR": ["data.synthetic.params.images={train: 16, val: 2}"],
}


def measure(topology: str, sets: list[str], root: Path, rounds: int) -> str:
    problem, name = topology.split("/")
    files = (config_files(), REPO / "problems" / problem / name / "config.yaml", "mini")
    cfg = build_config(*files, [f"data.root=bench_{name}", *sets])
    mini_images = build_config(*files, [])["data"]["synthetic"]["params"]["images"]["train"]
    steps = mini_images // (2 * cfg["training"]["batch_size"])
    task = importlib.import_module(f"problems.{problem}.{name}").build_task(cfg, root)
    task.prepare_data()
    logbook = Logbook(root / "logs", problem, name, 0, writer=True)
    logbook.create(cfg)
    trainer = Trainer(RunContext(task, cfg, dist.World(0, 1, 0, 1), logbook, torch.device("cpu")))
    data = task.dataset("train", train=True)
    batch = to_device(task.collate([data[i] for i in range(cfg["training"]["batch_size"])]), torch.device("cpu"))

    def train_step() -> None:
        loss = sum(task.loss(task.forward(trainer.model, batch), batch).values())
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    trainer.model.train()
    step = median_seconds(train_step, rounds)
    snapshot = median_seconds(lambda: trainer._snapshot(0), rounds)
    state = trainer._snapshot(0)
    write = median_seconds(lambda: trainer._save(0, state, is_best=True), rounds)
    trainer.close()
    size = (logbook.saves / "last.pt").stat().st_size / 2**20
    epoch = steps * step
    return (f"{topology:>20}: step {1000 * step:6.1f} ms, snapshot {1000 * snapshot:5.1f} ms, write "
            f"{1000 * write:5.1f} ms ({size:.1f} MiB); per epoch of {steps} steps: "
            f"{100 * (snapshot + write) / epoch:.1f}% extra, {100 * (snapshot + 2 * write) / epoch:.1f}% when evaluated")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    dist.init(args.threads)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for topology, sets in TOPOLOGIES.items():
            print(measure(topology, sets, Path(tmp), args.rounds), flush=True)


if __name__ == "__main__":
    main()
