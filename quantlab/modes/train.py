"""--mode train: train a float or QAT model, or continue experiment --exp_id."""
from __future__ import annotations

from quantlab.engine.context import RunContext
from quantlab.engine.task import to_device
from quantlab.engine.trainer import Trainer
from quantlab.metrics.report import quant_report, summary
from quantlab.modes import Mode


def report_quantization(ctx: RunContext, trainer: Trainer) -> None:
    """Print the size / BOPs summary and write quant_report.json (quantized models only)."""
    if not trainer.quant_layers or not ctx.world.is_main:
        return
    batch = to_device(ctx.task.example_batch(), ctx.device)
    report = quant_report(trainer.model, trainer.quant_layers, lambda m: ctx.task.forward(m, batch))
    ctx.logbook.write_json("quant_report.json", report)
    print(summary(report), flush=True)


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
