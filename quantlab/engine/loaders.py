"""The training data of a run: this rank's shard of the augmented training split."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler

from quantlab.engine.context import RunContext


def train_loader(ctx: RunContext, batch_size: int, seed: int) -> tuple[object, DistributedSampler, DataLoader]:
    """The training split with augmentation, this rank's `DistributedSampler` shard
    (reshuffled per epoch from `seed`), whole batches of `batch_size` only."""
    data = ctx.task.dataset("train", train=True)
    sampler = DistributedSampler(data, num_replicas=ctx.world.size, rank=ctx.world.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler,
                        collate_fn=ctx.task.collate, num_workers=ctx.cfg["engine"]["workers"], drop_last=True,
                        pin_memory=pin_memory(ctx.cfg["engine"]["pin_memory"], ctx.device))
    return data, sampler, loader


def pin_memory(choice: str, device: torch.device) -> bool:
    """`engine.pin_memory`: page-locked batches only help copies to a GPU (auto: on CUDA)."""
    return device.type == "cuda" if choice == "auto" else choice == "always"
