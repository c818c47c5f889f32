"""--mode test: evaluate a checkpoint of the experiment (--ckpt last, best, N) or any file
a reader accepts (ours, our integer export, the MQAT reference code's, a public one)."""
from __future__ import annotations

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


def run(ctx: RunContext) -> None:
    trainer, source = loaded(ctx)
    try:
        ckpt = ctx.options["ckpt"]
        tag = f"test_{Path(ckpt).stem if not ckpt.isdigit() else epoch_tag(int(ckpt))}"
        split = ctx.cfg["engine"]["eval_split"]
        ctx.say(f"testing {source} on the {split} split")
        trainer.evaluate(split, tag)
    finally:
        trainer.close()


#: the checkpoint to read: last, best, an epoch number of the experiment, or a file
CKPT = ("--ckpt", {"default": "best", "help": "for test / export: last, best, an epoch number, or a file path"})

MODE = Mode("test", "evaluate a checkpoint (--ckpt) of experiment --exp_id, or any checkpoint file", run,
            writes=False, options=(CKPT,))
