"""quantlab command line: train, quantize and test a problem/topology pair.

    horovodrun -np N python main.py --problem SwissCube --topology Widedepth --mode train
    torchrun --standalone --nproc_per_node N main.py --problem SwissCube --topology Widedepth --mode train
    python main.py --problem SwissCube --topology Widedepth --mode test --exp_id 0 --ckpt best

Parse, check, build the run context, dispatch: what each mode does is in quantlab/modes/.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from quantlab.modes import DEFAULT, MODES, Mode, execute, options  # noqa: E402  (the repository on the path first)
from quantlab.progress import line  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="modes:\n" + "\n".join(f"  {m.name:<8} {m.help}" for m in MODES.values()))
    p.add_argument("--problem", required=True, help="folder under problems/, e.g. SwissCube")
    p.add_argument("--topology", required=True, help="folder under problems/<P>/, e.g. Widedepth")
    p.add_argument("--mode", choices=list(MODES), default=DEFAULT)
    p.add_argument("--exp_id", type=int, default=None,
                   help="continue (train) or evaluate (test) this experiment; absent = a new one")
    p.add_argument("--profile", default="mini", help="config profile of a new experiment (mini, paper)")
    for flag, spec in options().items():
        p.add_argument(flag, **{**spec, "default": None})
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.epochs=5 (repeatable)")
    args = p.parse_args(argv)
    own = dict(MODES[args.mode].options)
    for flag, spec in options().items():
        name = flag.lstrip("-")
        if getattr(args, name) is not None and flag not in own:
            users = [m.name for m in MODES.values() if flag in dict(m.options)]
            p.error(f"{flag} is an option of --mode {', '.join(users)}, not of --mode {args.mode}")
        if getattr(args, name) is None and flag in own:
            setattr(args, name, own[flag].get("default"))
    return args


def storage_roots() -> tuple[Path, Path]:
    """Data and logs roots from cfg/hard_storage.json (or the file $QUANTLAB_STORAGE names);
    relative paths are resolved against that file's folder."""
    from quantlab.errors import ConfigError
    path = Path(os.environ.get("QUANTLAB_STORAGE", REPO / "cfg" / "hard_storage.json")).resolve()
    try:
        roots = json.loads(path.read_text())
        return (path.parent / roots["data"]).resolve(), (path.parent / roots["logs"]).resolve()
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: expected {{\"data\": ..., \"logs\": ...}} ({exc})")


def resolve_init(spec, logs_root: Path, args: argparse.Namespace) -> Path | None:
    """`quantize.init`: an experiment id (its best checkpoint) or a checkpoint file."""
    from quantlab.engine.logbook import Logbook, checkpoint_path
    from quantlab.errors import ConfigError
    if spec is None:
        return None
    path = (checkpoint_path(Logbook(logs_root, args.problem, args.topology, int(spec), writer=False).root, "best")
            if isinstance(spec, int) or str(spec).isdigit() else Path(spec))
    if not path.is_file():
        raise ConfigError(f"quantize.init: {path} not found")
    return path


def configure(args: argparse.Namespace) -> tuple[dict, Path, Path, list[str]]:
    """The checked configuration, the storage roots, and saved config keys a resume
    dropped; nothing is created but the logs root and its <problem>/<topology> folder
    (checked writable), and what the run reads and writes is checked: a continued
    experiment's folders, the checkpoint --ckpt names. Runs before the ranks' backend starts,
    identically on every rank."""
    from quantlab.engine import preflight
    from quantlab.engine.config import build_config, resume_config
    from quantlab.engine.logbook import Logbook
    from quantlab.errors import ConfigError
    from quantlab.modes import config_files

    topo_dir = REPO / "problems" / args.problem / args.topology
    if not (topo_dir / "config.yaml").is_file():
        known = sorted(f"{p.parent.name}/{p.name}" for p in (REPO / "problems").glob("*/*") if (p / "config.yaml").is_file())
        raise ConfigError(f"{topo_dir}: no such problem/topology (available: {', '.join(known)})")
    data_root, logs_root = storage_roots()
    defaults = config_files()
    dropped: list[str] = []
    saved = None if args.exp_id is None else Logbook(logs_root, args.problem, args.topology, args.exp_id, writer=False)
    if saved is None:
        cfg = build_config(defaults, topo_dir / "config.yaml", args.profile, args.overrides)
    else:
        cfg, dropped = resume_config(defaults, topo_dir / "config.yaml", saved.load_config(),
                                     saved.root / "config.yaml", args.overrides)
    mode = MODES[args.mode]
    preflight.recipe(cfg["quantize"], cfg["training"]["epochs"] if mode.trains and not mode.children else None)
    preflight.writable_folder(logs_root, "the logs root (cfg/hard_storage.json)")
    if saved is None:
        preflight.writable_folder(logs_root / args.problem / args.topology, "the experiments folder of "
                                  f"{args.problem}/{args.topology} in the logs root")
    else:
        preflight.writable_experiment(saved.root)
    if getattr(args, "ckpt", None) is not None:
        preflight.checkpoint(args.ckpt, None if saved is None else saved.saves)
    return cfg, data_root, logs_root, dropped


def run(args: argparse.Namespace) -> int:
    from quantlab import progress
    from quantlab.engine import distributed as dist, preflight
    from quantlab.engine.context import RunContext
    from quantlab.engine.logbook import Logbook
    from quantlab.errors import ConfigError
    from quantlab.quant import fused

    mode: Mode = MODES[args.mode]
    cfg, data_root, logs_root, dropped = configure(args)
    preflight.device(cfg["engine"]["device"])
    world = dist.init(cfg["engine"]["threads"], cfg["engine"]["stall_timeout"], cfg["engine"]["horovod"],
                      on_cpu=dist.on_cpu(cfg["engine"]["device"]), backend=cfg["engine"]["backend"])
    progress.configure(cfg["engine"]["progress_interval"])
    fused.configure(cfg["engine"]["fused_quantizers"])
    device = dist.device_for(world, cfg["engine"]["device"])
    task = importlib.import_module(f"problems.{args.problem}.{args.topology}").build_task(cfg, data_root)
    given = {**{flag.lstrip("-"): getattr(args, flag.lstrip("-")) for flag in options()}, "overrides": args.overrides}
    if dropped and world.is_main:
        line(f"config keys of the saved experiment that no longer exist, ignored: {', '.join(dropped)}")
    if mode.reads:
        if args.exp_id is None:
            raise ConfigError(f"--mode {mode.name} reads a finished experiment: pass its --exp_id")
        execute(mode, RunContext(task, cfg, world, Logbook(logs_root, args.problem, args.topology, args.exp_id,
                                                      writer=world.is_main), device, options=given))
        return 0

    note = dist.on_main(world, "data.ready", task.prepare_data)
    if note and world.is_main:
        line(note)
    preflight.evaluation_split(task, cfg["engine"]["eval_split"], "engine.eval_split")
    if mode.trains and cfg["engine"]["select_split"] not in ("none", cfg["engine"]["eval_split"]):
        preflight.evaluation_split(task, cfg["engine"]["select_split"], "engine.select_split")
    if mode.trains:
        training = cfg["quantize"]["child_training"] if mode.children else {}
        preflight.training_split(task, training.get("batch_size", cfg["training"]["batch_size"]), world)
    resuming = args.exp_id is not None
    last = Logbook(logs_root, args.problem, args.topology, args.exp_id, writer=False).saves / "last.pt" \
        if resuming else None
    resume = last if mode.resumes and last is not None and last.is_file() else None
    # the weights a run starts from: a new run's, a search's, or a continued run's that
    # saved nothing yet; test and export of an experiment read the checkpoint --ckpt names
    fresh = not resuming or mode.needs_start or (mode.resumes and resume is None)
    start = resolve_init(cfg["quantize"]["init"], logs_root, args) if fresh else None
    if mode.needs_start and start is None:
        raise ConfigError(f"--mode {mode.name} starts from a float checkpoint: set quantize.init")

    exp_id = args.exp_id if resuming else dist.on_main(
        world, "exp.claim", lambda: Logbook.claim(logs_root, args.problem, args.topology))
    logbook = Logbook(logs_root, args.problem, args.topology, exp_id, writer=world.is_main)
    with contextlib.ExitStack() as owned:
        if mode.writes:  # one writing run per experiment (or jobs sharing the parts of a search)
            stale = dist.on_main(world, "exp.lock", lambda: owned.enter_context(logbook.lock(shared=bool(mode.parts))))
            if stale and world.is_main:
                line(f"removed {len(stale)} temporary file(s) an interrupted run left in {logbook.root}")
        try:
            if not resuming:
                logbook.create(cfg)
            if world.is_main:
                where = logbook.root.relative_to(REPO) if logbook.root.is_relative_to(REPO) else logbook.root
                line(f"experiment {where} ({mode.name}, {world.size} rank{'s' if world.size > 1 else ''}, "
                     f"profile {cfg['profile']})")
            execute(mode, RunContext(task, cfg, world, logbook, device, start, resume, given))
        except BaseException:
            if not resuming and logbook.discard():
                line(f"removed {logbook.root}: the run failed before producing anything", sys.stderr)
            raise
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from quantlab.engine.distributed import current_rank
    from quantlab.engine.process import report
    from quantlab.signals import Stopped, stop_on_signals
    stop_on_signals()
    try:
        return run(args)
    except (Exception, Stopped) as exc:
        return report(exc, current_rank())


if __name__ == "__main__":
    from quantlab.engine.distributed import exit_process
    exit_process(main())
