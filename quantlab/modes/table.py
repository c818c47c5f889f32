"""--mode table: a finished experiment's tables (--exp_id), built again from its records,
printed and written under `tables/` (`--table all` or one of them by name)."""
from __future__ import annotations

from quantlab.engine.context import RunContext
from quantlab.errors import ConfigError
from quantlab.modes import Mode, all_tables, publish, recorded_tables


def run(ctx: RunContext) -> None:
    specs = {s.name: s for s in recorded_tables(ctx)}
    if not specs:
        folders = sorted({s.mode for s in all_tables(ctx.task)})
        raise ConfigError(f"--mode table: {ctx.logbook.root} holds no records of --mode {', '.join(folders)}")
    name = ctx.options["table"]
    if name != "all" and name not in specs:
        raise ConfigError(f"--table {name}: experiment {ctx.logbook.exp_id} has {', '.join(specs)}")
    publish(ctx, list(specs.values()) if name == "all" else [specs[name]])


MODE = Mode("table", "print and write the tables of finished experiment --exp_id", run, writes=False, reads=True,
            options=(("--table", {"default": "all", "help": "for {modes}: all, or one table of the "
                                  "finished experiment --exp_id"}),))
