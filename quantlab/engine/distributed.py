"""Horovod, wrapped once: ranks, state broadcast, gathers and per-rank data shards.

Every process path goes through Horovod; `python main.py` without a launcher is simply a
world of size 1, so the same code runs on a laptop and on N GPUs across nodes.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import horovod.torch as hvd
import torch


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(threads: int) -> World:
    """Start Horovod and fix the per-rank thread count (0 = share the node's cores)."""
    hvd.init()
    world = World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())
    if threads <= 0:
        threads = max(1, (os.cpu_count() or 1) // world.local_size)
    torch.set_num_threads(threads)
    return world


def device_for(world: World, choice: str) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def broadcast_object(obj: Any, name: str) -> Any:
    """Rank 0's `obj` on every rank."""
    return hvd.broadcast_object(obj, root_rank=0, name=name)


def allgather_object(obj: Any, name: str) -> list[Any]:
    return hvd.allgather_object(obj, name=name)


def barrier() -> None:
    hvd.barrier()


def broadcast_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             stateful: dict[str, Any]) -> None:
    """Make every rank start from rank 0's parameters, optimizer and controller states.

    `stateful` maps names to objects with state_dict/load_state_dict (scheduler, quantization
    controllers, ...): each is broadcast as an object, so later issues only register theirs.
    The optimizer's state goes as an object too: Horovod's broadcast_optimizer_state takes a
    zero-gradient step to fill an empty state, and that step applies weight decay to the
    weights, so a tested checkpoint would not be the one on disk.
    """
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer.load_state_dict(broadcast_object(_on_cpu(optimizer.state_dict()), name="state.optimizer"))
    for name, obj in stateful.items():
        state = broadcast_object(obj.state_dict(), name=f"state.{name}")
        obj.load_state_dict(state)


def _on_cpu(state: Any) -> Any:
    """A state dict with its tensors on the CPU, so it travels as an object between ranks
    (`Optimizer.load_state_dict` moves them back to each parameter's device)."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_on_cpu(v) for v in state)
    return state


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks.

    Gradients are averaged every step, but running statistics are local; averaging them
    before a checkpoint makes the saved model the same on every rank.
    """
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            buf.copy_(hvd.allreduce(buf.detach(), op=hvd.Average, name=f"buffer.{name}"))


def distributed_optimizer(optimizer: torch.optim.Optimizer,
                          model: torch.nn.Module) -> torch.optim.Optimizer:
    return hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                    op=hvd.Average)


def allreduce_mean(values: dict[str, float], name: str) -> dict[str, float]:
    """Average a dict of scalars over ranks (keys sorted for a stable order)."""
    if not values:
        return {}
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    reduced = hvd.allreduce(tensor, op=hvd.Average, name=name)
    return dict(zip(keys, reduced.tolist()))


def allreduce_statistic(value: torch.Tensor, reduction: str, name: str) -> torch.Tensor:
    """Combine a calibration statistic over ranks: "max" or "mean"."""
    ops = {"max": hvd.Max, "mean": hvd.Average}
    return hvd.allreduce(value.detach(), op=ops[reduction], name=name)


def shard_batches(count: int, batch_size: int, world: World) -> list[list[int]]:
    """This rank's share of an evaluation set, as whole batches of consecutive indices dealt
    round-robin: every index exactly once over all ranks, and every sample always computed
    in the same batch whatever the number of ranks, so predictions do not depend on it."""
    batches = [list(range(i, min(i + batch_size, count))) for i in range(0, count, batch_size)]
    return batches[world.rank::world.size]


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer: equal on all ranks iff they hold the same model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
