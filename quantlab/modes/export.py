"""--mode export: a quantized checkpoint as bit-packed integer codes (`model_int.pt`) and
as ONNX with Q/DQ pairs (`model.onnx`), in the experiment's `export/` folder."""
from __future__ import annotations

from quantlab.engine.context import RunContext
from quantlab.engine.task import to_device
from quantlab.errors import CheckpointError, shared
from quantlab.engine.reading import loaded
from quantlab.modes import CKPT, Mode
from quantlab.progress import line
from quantlab.quant.export import export_integer
from quantlab.quant.qdq import export_onnx


def run(ctx: RunContext) -> None:
    trainer, source = loaded(ctx)
    try:
        if not trainer.quant_layers:
            raise shared(CheckpointError(f"{source}: export needs a quantized model (the checkpoint and "
                                         "quantize.rules quantize nothing)"))
        if not ctx.world.is_main:
            return
        folder = ctx.logbook.root / "export"
        model = trainer.model.eval()
        sizes = {"model_int.pt": export_integer(model, folder / "model_int.pt", trainer.quant_layers)}
        inputs = ctx.task.export_inputs(to_device(ctx.task.example_batch(), ctx.device))
        export_onnx(model, tuple(inputs.values()), folder / "model.onnx", list(inputs))
        sizes["model.onnx"] = (folder / "model.onnx").stat().st_size
        line(f"exported {source}: " + ", ".join(f"{folder / k} ({v / 2**20:.3f} MiB)" for k, v in sizes.items()))
    finally:
        trainer.close()


MODE = Mode("export", "write a quantized checkpoint as integer codes and ONNX (Q/DQ)", run, writes=False,
            options=(CKPT,))
