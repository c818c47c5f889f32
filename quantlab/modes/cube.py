"""--mode cube: MQAT's module cube. Every non-empty subset of the modules is quantized at
`mqat.probe_bits` (the rest float), fine-tuned and evaluated as a child run; single
modules are ranked by the change of the metric (`mqat/cube.json`, the `cube` table)."""
from __future__ import annotations

from quantlab.engine.context import RunContext
from quantlab.modes import Mode, publish
from quantlab.mqat.runner import float_metric, staged
from quantlab.mqat.search import Cube, module_cube
from quantlab.mqat.tables import TABLES
from quantlab.records import Ledger


def ledger(ctx: RunContext) -> Ledger:
    """Every finished MQAT candidate of the experiment (`mqat/ledger.json`)."""
    return Ledger(ctx.logbook.root / "mqat" / "ledger.json", writer=ctx.world.is_main)


def cube(ctx: RunContext, done: Ledger) -> Cube:
    """The float start, then the cube; finished probes come from the ledger."""
    start = float_metric(ctx, done)
    modules = list(ctx.task.groups)
    found = module_cube(modules, start, staged(ctx, done), ctx.cfg["mqat"]["probe_bits"])
    ctx.logbook.write_json("mqat/cube.json", {"float_metric": found.float_metric, "cube": found.cube,
                                              "singles": found.singles, "ranking": found.ranking})
    ctx.say(f"flow by module change (least harmful first): {' -> '.join(found.ranking)}")
    return found


def run(ctx: RunContext) -> None:
    cube(ctx, ledger(ctx))
    publish(ctx, [t for t in TABLES if t.name == "cube"])


MODE = Mode("cube", "MQAT's module cube: every module subset at mqat.probe_bits, fine-tuned (child runs)", run,
            trains=True, children=True, needs_start=True)
