"""One rank of tests/test_backends.py: every collective the project uses, on values that
differ by rank, with what this rank saw written to <out>/rank<r>.json.

    horovodrun -np 2 -H localhost:2 python tests/collectives_worker.py OUT horovod
    torchrun --standalone --nproc_per_node 2 tests/collectives_worker.py OUT torch
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantlab.engine import distributed as dist  # noqa: E402
from quantlab.errors import CheckpointError  # noqa: E402


def gradients_step(world: dist.World, compression: str, passes: int) -> list[float]:
    """One SGD step of a linear model whose ranks see different data."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = dist.distributed_optimizer(torch.optim.SGD(model.parameters(), lr=0.5), model,
                                           {"compression": compression, "backward_passes_per_step": passes})
    optimizer.zero_grad()
    x = torch.arange(12.0).reshape(4, 3) * (world.rank + 1) / 10
    for part in range(passes):
        (model(x[part::passes]).square().mean() / passes).backward()
    optimizer.synchronize()
    with optimizer.skip_synchronize():
        optimizer.step()
    return [*model.weight.detach().flatten().tolist(), *model.bias.detach().tolist()]


def trained_state(rank: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A model, AdamW and StepLR that differ by rank: other weights, lr and steps taken."""
    torch.manual_seed(rank)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1 * (rank + 2), weight_decay=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(rank + 1):
        optimizer.zero_grad()
        model(torch.full((1, 3), rank + 1.0)).square().sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Every number of the training state, as JSON."""
    state = optimizer.state_dict()
    return {"weights": [p.detach().flatten().tolist() for p in model.parameters()],
            "optimizer": {str(i): {k: torch.as_tensor(v).flatten().tolist() for k, v in sorted(s.items())}
                          for i, s in state["state"].items()},
            "lr": [g["lr"] for g in state["param_groups"]],
            "scheduler": {"last_epoch": scheduler.last_epoch, "last_lr": scheduler.get_last_lr(),
                          "base_lrs": scheduler.base_lrs}}


def main(out: Path, backend: str) -> None:
    world = dist.init(1, stall_timeout=60, horovod={"cycle_time_ms": None, "fusion_threshold_mb": None,
                                                    "mpi_wait": "auto"}, backend=backend)
    seen: dict = {"rank": world.rank, "size": world.size, "backend": dist.backend_name()}
    seen["broadcast"] = dist.broadcast_object({"from": world.rank}, "t.broadcast")
    seen["gather"] = dist.allgather_object(world.rank * 10, "t.gather")
    seen["mean"] = dist.allreduce_mean({"b": 2.0 * world.rank, "a": world.rank + 1.0}, "t.mean")
    seen["scalar"] = dist.allreduce_scalar(world.rank, "t.scalar")
    seen["max"] = dist.allreduce_statistic(torch.tensor([world.rank + 1.0]), "max", "t.max").tolist()
    seen["stat_mean"] = dist.allreduce_statistic(torch.tensor([world.rank + 1.0]), "mean", "t.stat").tolist()
    torch.manual_seed(world.rank)  # every rank starts elsewhere
    model = nn.BatchNorm1d(2)
    model.running_mean.fill_(float(world.rank))
    seen["rank0_start"] = dist.broadcast_object(dist.state_digest(model) if world.is_main else None, "t.start")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dist.broadcast_training_state(model, optimizer, {})
    seen["after_broadcast"] = dist.state_digest(model)
    model.running_mean.fill_(float(world.rank))
    dist.average_buffers(model)
    seen["buffers"] = model.running_mean.tolist()
    trained = trained_state(world.rank)
    seen["trained_before"] = snapshot(*trained)
    dist.broadcast_training_state(trained[0], trained[1], {"scheduler": trained[2]})
    seen["trained_after"] = snapshot(*trained)
    seen["step"] = gradients_step(world, "none", 1)
    seen["step_fp16"] = gradients_step(world, "fp16", 1)
    seen["step_two_passes"] = gradients_step(world, "none", 2)

    def fail() -> None:
        raise CheckpointError("rank 0's verdict")
    try:
        dist.on_main(world, "t.verdict", fail)
    except CheckpointError as exc:
        seen["verdict"] = [str(exc), exc.shared]
    (out / f"rank{world.rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
    dist.exit_process(0)
