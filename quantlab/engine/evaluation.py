"""Evaluation over all ranks: each predicts its shard, rank 0 scores the gathered whole."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from quantlab.engine import distributed as dist
from quantlab.engine.context import RunContext
from quantlab.engine.loaders import pin_memory
from quantlab.engine.task import to_device
from quantlab.progress import line, progress


@torch.no_grad()
def evaluate(ctx: RunContext, model: torch.nn.Module, split: str, tag: str, quiet: bool = False) -> dict[str, float]:
    """Predict on this rank's shard, gather every rank's predictions, score on rank 0
    (`eval/<tag>/metrics.json`, the per-image results behind it in `per_image.npz`, and
    the task's report), and return the metrics everywhere.
    Batches are consecutive indices dealt whole to the ranks, so the numbers do not
    depend on the number of ranks."""
    task = ctx.task
    data = task.dataset(split, train=False)
    batches = dist.shard_batches(len(data), ctx.cfg["evaluation"]["batch_size"], ctx.world)
    loader = DataLoader(data, batch_sampler=batches, collate_fn=task.collate, num_workers=ctx.cfg["engine"]["workers"],
                        pin_memory=pin_memory(ctx.cfg["engine"]["pin_memory"], ctx.device))
    model.eval()
    predictions: list[dict] = []
    for batch in progress(loader, desc=f"eval {split}", enabled=ctx.world.is_main):
        batch = to_device(batch, ctx.device)
        predictions += task.predict(task.forward(model, batch), batch)
    gathered = dist.allgather_object(predictions, name=f"eval.{tag}")
    metrics = None
    if ctx.world.is_main:
        merged = sorted((p for part in gathered for p in part), key=lambda p: p["index"])
        metrics, per_image = task.evaluate(merged, data)
        ctx.logbook.write_metrics(tag, metrics, per_image)
        table = task.report(metrics, ctx.logbook.eval_dir(tag))
        if not quiet:
            line(f"\n{split} split, {tag}:\n{table}")
    return dist.broadcast_object(metrics, name=f"eval.metrics.{tag}")
