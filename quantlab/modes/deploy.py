"""--mode deploy: a finished experiment's checkpoint (float or quantized) as integer ONNX
that onnxruntime's CPU provider runs with integer kernels; its accuracy through the
task's own evaluation beside the fake-quant model's; latency, memory and file sizes.

Everything goes to `deploy/<name>/` (fp32 and int8 ONNX, report.json), written in a
staging folder that replaces the old one only once the deploy has finished; the two
evaluations go to `eval/` like any test (`test_<name>`, `deploy_<name>`).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from quantlab.deploy.table import deploy_table
from quantlab.engine import distributed as dist
from quantlab.engine.context import RunContext
from quantlab.engine.evaluation import evaluate
from quantlab.engine.reading import evaluation_tag, loaded
from quantlab.errors import CheckpointError
from quantlab.modes import CKPT, Mode, publish
from quantlab.quant.export import export_integer
from quantlab.records import TableSpec, read_json


def float_reference(ctx: RunContext) -> str | None:
    """The float evaluation the deployed model is compared with (relative to the experiment)."""
    chosen = ctx.cfg["deploy"]["reference"] or read_json(ctx.logbook.root / "mqat" / "result.json").get(
        "float_evaluation")
    if chosen and not (ctx.logbook.root / chosen / "metrics.json").is_file():
        raise CheckpointError(f"deploy.reference: {ctx.logbook.root / chosen} holds no evaluation")
    return chosen


def calibration_batches(ctx: RunContext, names: list[str]) -> list[dict[str, np.ndarray]]:
    """The first `deploy.calibration_batches` training batches of epoch 0, as training sees
    them (ZebraPose's training crops exist only so)."""
    data = ctx.task.dataset("train", train=True)
    size, count = ctx.cfg["training"]["batch_size"], ctx.cfg["deploy"]["calibration_batches"]
    batches = []
    for start in range(0, min(len(data), size * count), size):
        inputs = ctx.task.export_inputs(ctx.task.collate([data[i] for i in range(start, min(len(data), start + size))]))
        batches.append({n: inputs[n].numpy() for n in names})
    return batches


def publish_folder(staging: Path, target: Path) -> None:
    """Replace `target` by `staging` (the previous deploy is removed only now)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        shutil.rmtree(old)
    os.replace(staging, target)


def networks(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The networks a model deploys as, by name: each entry of a ModuleDict (ZebraPose's
    one network per object, which the task calls by name), else the model itself ("")."""
    return dict(model.items()) if isinstance(model, torch.nn.ModuleDict) else {"": model}


def run(ctx: RunContext) -> None:
    # onnx and onnxruntime take about a second to import: only a deploy run pays it
    from quantlab.deploy.pipeline import FP32, INT8, deploy
    from quantlab.deploy.session import DeployedModel
    trainer, source = loaded(ctx)
    try:
        reference = float_reference(ctx)
        test_tag = evaluation_tag(ctx.options["ckpt"], source, ctx.logbook.saves)
        name = test_tag.removeprefix("test_")
        staging = ctx.logbook.root / "deploy" / f".{name}.partial"
        target = ctx.logbook.root / "deploy" / name
        made: dict = {}

        def stage() -> dict:
            inputs = ctx.task.export_inputs(ctx.task.example_batch())
            batches = calibration_batches(ctx, list(inputs))
            try:
                found = {part: deploy(net, inputs, batches, ctx.cfg["deploy"]["calibration"])
                         for part, net in networks(trainer.model).items()}
            except CheckpointError as exc:
                raise CheckpointError(f"{source}: {exc}") from None
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            made["deployments"] = found
            made["sizes"] = {part: deployment.write(staging / part) for part, deployment in found.items()}
            if any(d.layers for d in found.values()):
                made["packed"] = export_integer(trainer.model, staging / "model_int.pt", trainer.quant_layers)
            return {part: (d.names, d.spec) for part, d in found.items()}

        built = dist.on_main(ctx.world, "deploy.build", stage)
        split = ctx.cfg["engine"]["eval_split"]
        ctx.say(f"evaluating {source} on the {split} split: torch, onnxruntime fp32, onnxruntime int8")
        trainer.evaluate(split, test_tag)
        for graph_file, tag in ((FP32, f"deploy_{name}_fp32"), (INT8, f"deploy_{name}")):
            sessions = {part: DeployedModel(staging / part / graph_file, *found, torch.get_num_threads())
                        for part, found in built.items()}
            evaluate(ctx, sessions[""] if "" in sessions else torch.nn.ModuleDict(sessions), split, tag)
        if ctx.world.is_main:
            report = {"source": str(source), "name": name, "reference": reference,
                      "quantized": bool(trainer.quant_layers), "torch": f"eval/{test_tag}",
                      "deployed": f"eval/deploy_{name}", "float_graph": f"eval/deploy_{name}_fp32",
                      "packed_size": made.get("packed"), **measured(ctx, made, staging)}
            ctx.logbook.write_json(Path("deploy") / f".{name}.partial" / "report.json", report)
            publish_folder(staging, target)
            ctx.say(f"deployed {source} to {target}")
        dist.broadcast_object(None, "deploy.done")
        publish(ctx, TABLES)
    finally:
        trainer.close()


def measured(ctx: RunContext, made: dict, staging: Path) -> dict:
    """What the report says of the first network (all of a ZebraPose model's have one
    architecture): its graph, its plan, its latency, memory and file sizes."""
    from quantlab.deploy.measure import timings
    part, found = next(iter(made["deployments"].items()))
    settings, plan = ctx.cfg["deploy"], found.plan
    return {"networks": list(made["deployments"]), "timed": part, "sizes": made["sizes"][part],
            "operators": found.operators, "float_weight_nodes": found.float_weight_nodes,
            "layer_codes": len(plan.layer_codes), "post_training": plan.post_training,
            "activations": {"learned": plan.learned, "calibrated": plan.calibrated,
                            "calibration": settings["calibration"]}, "notes": plan.notes,
            **timings(found, staging / part, settings["threads"], settings["warmup"], settings["runs"],
                      settings["profile_runs"])}


TABLES = (TableSpec("deploy", "deploy", deploy_table),)

MODE = Mode("deploy", "integer ONNX of a checkpoint (--ckpt) for onnxruntime's CPU kernels: accuracy, latency, "
            "memory", run, section="deploy", tables=TABLES, writes=False, options=(CKPT,))
