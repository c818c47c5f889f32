"""--mode train: train a float or QAT model, or continue experiment --exp_id."""
from __future__ import annotations

from quantlab.engine.context import RunContext
from quantlab.engine.reading import report_quantization
from quantlab.engine.trainer import Trainer
from quantlab.modes import Mode


def run(ctx: RunContext) -> None:
    trainer = Trainer(ctx, init=ctx.start, resume=ctx.resume)
    try:
        report_quantization(ctx, trainer)
        if ctx.resume is not None:
            trainer.resume()
            if ctx.options.get("overrides"):
                ctx.logbook.write_config(ctx.cfg)  # only once the checkpoint has loaded under it
        trainer.fit()
    finally:
        trainer.close()


MODE = Mode("train", "train a float or QAT model, or continue experiment --exp_id", run, trains=True, resumes=True)
