"""--mode test: evaluate a checkpoint of the experiment (--ckpt last, best, N) or any file
a reader accepts (ours, our integer export, the MQAT reference code's, a public one)."""
from __future__ import annotations

from quantlab.engine.context import RunContext
from quantlab.engine.reading import evaluation_tag, loaded
from quantlab.modes import CKPT, Mode


def run(ctx: RunContext) -> None:
    trainer, source = loaded(ctx)
    try:
        tag = evaluation_tag(ctx.options["ckpt"], source, ctx.logbook.saves)
        split = ctx.cfg["engine"]["eval_split"]
        ctx.say(f"testing {source} on the {split} split")
        trainer.evaluate(split, tag)
    finally:
        trainer.close()


MODE = Mode("test", "evaluate a checkpoint (--ckpt) of experiment --exp_id, or any checkpoint file", run,
            writes=False, options=(CKPT,))
