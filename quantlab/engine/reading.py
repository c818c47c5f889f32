"""A finished experiment's checkpoint loaded for reading (test, export, deploy): the model
of the config with the file's weights on every rank, and the tag its evaluation goes under."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from quantlab.engine.context import RunContext
from quantlab.engine.task import to_device
from quantlab.engine.trainer import Trainer, epoch_tag
from quantlab.metrics.report import quant_report, summary
from quantlab.progress import line


def report_quantization(ctx: RunContext, trainer: Trainer) -> None:
    """Print the size / BOPs summary and write quant_report.json (quantized models only)."""
    if not trainer.quant_layers or not ctx.world.is_main:
        return
    batch = to_device(ctx.task.example_batch(), ctx.device)
    report = quant_report(trainer.model, trainer.quant_layers, lambda m: ctx.task.forward(m, batch))
    ctx.logbook.write_json("quant_report.json", report)
    line(summary(report))


def loaded(ctx: RunContext) -> tuple[Trainer, Path]:
    """The model of the config with the checkpoint --ckpt loaded on every rank, its
    activation ranges calibrated if still pending, its size report printed."""
    trainer = Trainer(ctx, init=ctx.start)
    source = ctx.logbook.resolve(ctx.options["ckpt"])
    trainer.load(source)
    trainer.sync()
    trainer.calibrate()
    report_quantization(ctx, trainer)
    return trainer, source


def evaluation_tag(ckpt: str, source: Path, saves: Path) -> str:
    """The `eval/` folder of a test: `test_<name>` for a checkpoint of the experiment
    (last, best, an epoch, or a path into its saves/), and for a file from elsewhere its
    name and the first 8 hex digits of its SHA-256, so testing another `last.pt` never
    overwrites the evaluation of the experiment's own."""
    if ckpt.isdigit():
        return f"test_{epoch_tag(int(ckpt))}"
    if source.resolve().parent == saves.resolve():
        return f"test_{source.stem}"
    digest = hashlib.sha256()
    with open(source, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"test_{re.sub(r'[^A-Za-z0-9_.-]+', '_', source.stem)}_{digest.hexdigest()[:8]}"
