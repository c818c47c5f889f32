"""The run modes, one module per `--mode`, found here by name.

A mode module defines `MODE = Mode(...)`: its command-line name, what it needs before it
starts (the flags main.py checks: a training split, a float start, an experiment lock),
the config section it owns (`<section>.yaml` beside the module: defaults and `schema:`),
the tables it writes, and `run(ctx)`. A search mode also names its parts (groups of
independent child runs that separate jobs may share: `--worker PART`) and lists its child
runs for a campaign's plan (`plan(cfg, task)`). Adding a method is adding a module and
its section file; main.py, the trainer and the Task base class do not change.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from quantlab.engine.context import RunContext
from quantlab.engine.config import overlaid
from quantlab.engine.runs import Child
from quantlab.errors import ConfigError
from quantlab.records import TableSpec, over_seeds, save_tables

HERE = Path(__file__).resolve().parent
#: the engine's and the quantization library's defaults, in the repository's cfg/
DEFAULTS = HERE.parents[1] / "cfg" / "defaults.yaml"


#: the option of the modes with parts: this job works on one part only (a campaign's fan-out)
WORKER = ("--worker", {"default": None, "metavar": "PART",
                       "help": "for {modes}: run only the children of PART that no other job holds, then stop "
                               "(a campaign's fan-out job)"})


#: the option of the modes that read a checkpoint of a finished experiment
CKPT = ("--ckpt", {"default": "best", "help": "for {modes}: last, best, an epoch number, mqat or "
                                              "mqat:<budget> (an MQAT search's result), or a file path"})


@dataclass(frozen=True)
class Mode:
    name: str
    help: str
    run: Callable[[RunContext], None]
    #: the config section the mode owns: `<section>.yaml` beside the module
    section: str | None = None
    #: the tables it writes from its results (the task may add its own for them)
    tables: tuple[TableSpec, ...] = ()
    #: it trains: the training split must give every rank a whole batch
    trains: bool = False
    #: its trainings are child runs, with `quantize.child_training` over `training`
    children: bool = False
    #: it starts from a float checkpoint (`quantize.init`)
    needs_start: bool = False
    #: it writes checkpoints or records into the experiment: one such run at a time
    writes: bool = True
    #: a continued run restores the experiment's `last.pt`
    resumes: bool = False
    #: it only reads a finished experiment (`--exp_id`): no data, no new folder
    reads: bool = False
    #: its command-line options: (flag, argparse keywords); modes may share one
    options: tuple[tuple[str, dict], ...] = ()
    #: parts of independent child runs, each with the parts it needs finished first; jobs
    #: of one experiment then share it (children are claimed one by one, engine.claims)
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: its child runs as a campaign plans them, from the configuration and the task
    plan: Callable[[dict, object], list[Child]] | None = None


def _discover() -> dict[str, Mode]:
    modes = {}
    for info in pkgutil.iter_modules([str(HERE)]):
        mode = getattr(importlib.import_module(f"{__name__}.{info.name}"), "MODE", None)
        if isinstance(mode, Mode):
            modes[mode.name] = mode
    return dict(sorted(modes.items()))


#: the mode of a run that names none
DEFAULT = "train"


def options() -> dict[str, dict]:
    """Every mode's command-line options, by flag (a shared flag is declared alike); a
    help's `{modes}` names the modes that take the flag."""
    found: dict[str, dict] = {}
    for mode in MODES.values():
        for flag, spec in mode.options:
            found.setdefault(flag, spec)
    for flag, spec in found.items():
        takers = ", ".join(m.name for m in MODES.values() if any(f == flag for f, _ in m.options))
        found[flag] = {**spec, "help": spec["help"].replace("{modes}", f"--mode {takers}")}
    return found


def config_files() -> list[Path]:
    """The defaults files of a run: the global one, then every mode's section."""
    return [DEFAULTS, *(HERE / f"{m.section}.yaml" for m in MODES.values() if m.section)]


def task_tables(ctx: RunContext, records: str) -> tuple[TableSpec, ...]:
    """The task's own tables built from the results a mode records under `records/`."""
    return tuple(t for t in getattr(ctx.task, "tables", ()) if t.mode == records)


def all_tables(task) -> list[TableSpec]:
    """Every table of the modes and of the task."""
    return [*(t for m in MODES.values() for t in m.tables), *getattr(task, "tables", ())]


def record_roots(ctx: RunContext) -> list[Path]:
    """The folders whose records the tables read: one per seed that `execute` ran a search
    for (`seeds/seed<s>/`), or the experiment's own."""
    seeded = [ctx.logbook.seeded(s).root for s in ctx.cfg["seeds"]]
    return [root for root in seeded if root.is_dir()] or [ctx.logbook.root]


def recorded_tables(ctx: RunContext) -> list[TableSpec]:
    """The tables whose mode left records in the experiment (in its first seed's folder)."""
    first = record_roots(ctx)[0]
    return [spec for spec in all_tables(ctx.task) if (first / spec.mode).is_dir()]


def publish(ctx: RunContext, specs: tuple[TableSpec, ...] | list[TableSpec]) -> str:
    """Build the tables from the experiment's records (one per seed, then combined over
    the seeds), write them under `tables/` (main rank) with the figures of those the paper
    draws (`tables/<name>.png`), print them and return their Markdown."""
    tables = [over_seeds([spec.build(root, ctx.task, ctx.cfg) for root in record_roots(ctx)]) for spec in specs]
    markdown = save_tables(ctx.logbook.root, tables, ctx.world.is_main)
    if ctx.world.is_main:
        for spec, table in zip(specs, tables):
            if spec.figure is not None:
                spec.figure(table, ctx.task, ctx.logbook.root / "tables" / f"{table.name}.png")
    ctx.say(f"\n{markdown}\n\ntables written to {ctx.logbook.root / 'tables'}")
    return markdown


def execute(mode: Mode, ctx: RunContext) -> None:
    """Run `mode`. A search (a mode with child runs) given `seeds` runs once per seed, each
    in `seeds/seed<s>/` with `seed: s` (resumable like any search: finished children are
    kept), then writes the tables over the seeds."""
    seeds = ctx.cfg["seeds"]
    if seeds and mode.writes and not mode.children:
        searches = ", ".join(m.name for m in MODES.values() if m.children)
        raise ConfigError(f"config key 'seeds': --mode {mode.name} runs no child trainings to repeat per seed "
                          f"(seeds apply to --mode {searches})")
    if not seeds or not mode.children:
        mode.run(ctx)
        return
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config key 'seeds': {seeds} repeats a seed")
    for number, seed in enumerate(seeds, start=1):
        ctx.say(f"\n== seed {seed} ({number} of {len(seeds)}) ==")
        mode.run(dataclasses.replace(ctx, logbook=ctx.logbook.seeded(seed),
                                     cfg=overlaid(ctx.cfg, {"seed": seed, "seeds": []})))
    publish(ctx, recorded_tables(ctx))


#: every mode, by name; discovered last, since the mode modules import the names above
MODES = _discover()
