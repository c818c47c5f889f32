"""--mode test: evaluate a checkpoint of the experiment (--ckpt last, best, N) or any file
a reader accepts (ours, our integer export, the MQAT reference code's, a public one)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from quantlab.engine.context import RunContext
from quantlab.engine.trainer import Trainer, epoch_tag
from quantlab.modes import Mode
from quantlab.modes.train import report_quantization


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


def run(ctx: RunContext) -> None:
    trainer, source = loaded(ctx)
    try:
        tag = evaluation_tag(ctx.options["ckpt"], source, ctx.logbook.saves)
        split = ctx.cfg["engine"]["eval_split"]
        ctx.say(f"testing {source} on the {split} split")
        trainer.evaluate(split, tag)
    finally:
        trainer.close()


#: the checkpoint to read: last, best, an epoch number of the experiment, or a file
CKPT = ("--ckpt", {"default": "best", "help": "for test / export: last, best, an epoch number, or a file path"})

MODE = Mode("test", "evaluate a checkpoint (--ckpt) of experiment --exp_id, or any checkpoint file", run,
            writes=False, options=(CKPT,))
