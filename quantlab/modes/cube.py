"""--mode cube: MQAT's module cube. Every non-empty subset of the modules is quantized at
`mqat.probe_bits` (the rest float), fine-tuned and evaluated as a child run; single
modules are ranked by the change of the metric (`mqat/cube.json`, the `cube` table)."""
from __future__ import annotations

from quantlab.engine.claims import Jobs
from quantlab.engine.context import RunContext
from quantlab.modes import WORKER, Mode, publish
from quantlab.mqat.cube import cube, cube_children, ledger
from quantlab.mqat.runner import StagedRuns
from quantlab.mqat.tables import TABLES


def run(ctx: RunContext) -> None:
    StagedRuns(ctx)  # checks the stages' settings before the float start is scored
    jobs = Jobs(ctx, "cube", tuple(MODE.parts))
    cube(ctx, ledger(jobs, ctx))
    if not jobs.stops_after("cube"):
        publish(ctx, [t for t in TABLES if t.name == "cube"])


MODE = Mode("cube", "MQAT's module cube: every module subset at mqat.probe_bits, fine-tuned (child runs)", run,
            trains=True, children=True, needs_start=True, options=(WORKER,), parts={"cube": ()}, plan=cube_children)
