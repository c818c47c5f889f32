"""MQAT's module cube (Javed et al., TMLR 2024): every non-empty subset of the modules
quantized at `mqat.probe_bits` (the rest float), fine-tuned and evaluated as a child run;
single modules ranked by the change of the metric. Shared by --mode cube and --mode mqat."""
from __future__ import annotations

from quantlab.engine.claims import Claimed, Jobs
from quantlab.engine.context import RunContext
from quantlab.engine.runs import Child
from quantlab.mqat.runner import float_entry, staged
from quantlab.mqat.search import Cube, module_cube, subsets


def ledger(jobs: Jobs, ctx: RunContext) -> Claimed:
    """Every finished MQAT candidate of the experiment (`mqat/ledger.json`), claimed one
    by one by the jobs that share the search."""
    return jobs.ledger(ctx.logbook.root / "mqat" / "ledger.json")


def cube(ctx: RunContext, done: Claimed) -> Cube:
    """The float start, then the cube (part `cube`); finished probes come from the ledger.
    `mqat/cube.json` is written once every probe is in (a worker may see only some)."""
    with done.part("cube"):
        start = float_entry(ctx, done)
        found = module_cube(list(ctx.task.groups), start["metric"], staged(ctx, done), ctx.cfg["mqat"]["probe_bits"])
    if not done.pending:
        ctx.logbook.write_json("mqat/cube.json", {"float_metric": found.float_metric, "cube": found.cube,
                                                  "float_evaluation": start.get("evaluation"),
                                                  "singles": found.singles, "ranking": found.ranking})
        ctx.say(f"flow by module change (least harmful first): {' -> '.join(found.ranking)}")
    return found


def cube_children(cfg: dict, task: object) -> list[Child]:
    """The float start's evaluation and one probe per module subset."""
    modules = list(task.groups)
    return [Child("cube", "float", 0, quantized=False)] + [
        Child("cube", "+".join(s), cfg["mqat"]["stage_epochs"]) for s in subsets(modules)]
