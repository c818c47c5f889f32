"""--mode cube: MQAT's module cube. Every non-empty subset of the modules is quantized at
`mqat.probe_bits` (the rest float), fine-tuned and evaluated as a child run; single
modules are ranked by the change of the metric (`mqat/cube.json`, the `cube` table)."""
from __future__ import annotations

from quantlab.engine.claims import Claimed, Jobs
from quantlab.engine.context import RunContext
from quantlab.modes import WORKER, Child, Mode, publish
from quantlab.mqat.runner import StagedRuns, float_entry, staged
from quantlab.mqat.search import Cube, module_cube, subsets
from quantlab.mqat.tables import TABLES


def ledger(jobs: Jobs, ctx: RunContext) -> Claimed:
    """Every finished MQAT candidate of the experiment (`mqat/ledger.json`), claimed one
    by one by the jobs that share the search."""
    return jobs.ledger(ctx.logbook.root / "mqat" / "ledger.json")


def cube(ctx: RunContext, done: Claimed) -> Cube:
    """The float start, then the cube (part `cube`); finished probes come from the ledger.
    `mqat/cube.json` is written once every probe is in (a worker may see only some)."""
    with done.jobs.part("cube"):
        start = float_entry(ctx, done)
        found = module_cube(list(ctx.task.groups), start["metric"], staged(ctx, done), ctx.cfg["mqat"]["probe_bits"])
    if not done.jobs.pending:
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


def run(ctx: RunContext) -> None:
    StagedRuns(ctx)  # checks the stages' settings before the float start is scored
    jobs = Jobs(ctx, "cube", tuple(MODE.parts))
    cube(ctx, ledger(jobs, ctx))
    if not jobs.stops_after("cube"):
        publish(ctx, [t for t in TABLES if t.name == "cube"])


MODE = Mode("cube", "MQAT's module cube: every module subset at mqat.probe_bits, fine-tuned (child runs)", run,
            trains=True, children=True, needs_start=True, options=(WORKER,), parts={"cube": ()}, plan=cube_children)
