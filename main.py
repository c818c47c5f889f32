"""quantlab command line: train, quantize and test a problem/topology pair.

    horovodrun -np N python main.py --problem SwissCube --topology Widedepth --mode train
    python main.py --problem SwissCube --topology Widedepth --mode test --exp_id 0 --ckpt best
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
MODES = ("train", "test", "export", "sensitivity", "mqat", "hawq", "ptq", "fisher", "table")
TABLES = ("all", "cube", "module_bits", "compression", "depth", "detr_ptq", "detr_fisher")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", required=True, help="folder under problems/, e.g. SwissCube")
    p.add_argument("--topology", required=True, help="folder under problems/<P>/, e.g. Widedepth")
    p.add_argument("--mode", choices=MODES, default="train")
    p.add_argument("--exp_id", type=int, default=None,
                   help="continue (train) or evaluate (test) this experiment; absent = a new one")
    p.add_argument("--profile", default="mini", help="config profile of a new experiment (mini, paper)")
    p.add_argument("--ckpt", default="best",
                   help="for test / export: last, best, an epoch number, or a file path")
    p.add_argument("--table", choices=TABLES, default="all",
                   help="for --mode table: which table of a finished mqat, ptq or fisher experiment (--exp_id)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.epochs=5 (repeatable)")
    return p.parse_args(argv)


def storage_roots() -> tuple[Path, Path]:
    """Data and logs roots from cfg/hard_storage.json (or the file $QUANTLAB_STORAGE names);
    relative paths are resolved against that file's folder."""
    from quantlab.engine.errors import ConfigError
    path = Path(os.environ.get("QUANTLAB_STORAGE", REPO / "cfg" / "hard_storage.json")).resolve()
    try:
        roots = json.loads(path.read_text())
        return (path.parent / roots["data"]).resolve(), (path.parent / roots["logs"]).resolve()
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: expected {{\"data\": ..., \"logs\": ...}} ({exc})")


def resolve_init(spec, logs_root: Path, args: argparse.Namespace) -> Path | None:
    """`quantize.init`: an experiment id (its best checkpoint) or a checkpoint file."""
    from quantlab.engine.errors import ConfigError
    if spec is None:
        return None
    path = (logs_root / args.problem / args.topology / f"exp{int(spec):04d}" / "saves" / "best.pt"
            if isinstance(spec, int) or str(spec).isdigit() else Path(spec))
    if not path.is_file():
        raise ConfigError(f"quantize.init: {path} not found")
    return path


def size_table(report: dict) -> str:
    rows, size, cost = report["layers"], report["size"], report["cost"]
    algos = sorted({(r["algorithm"], r["bits"]) for r in rows})
    summary = ", ".join(f"{sum(1 for r in rows if (r['algorithm'], r['bits']) == a)} x {a[0]} {a[1]}-bit" for a in algos)
    return (f"quantized {len(rows)} layers ({summary})\n"
            f"  weights {size['bytes'] / 2**20:.3f} MiB vs {size['float_bytes'] / 2**20:.3f} MiB float32: "
            f"compression {size['compression']:.2f}x\n"
            f"  compute {cost['macs'] / 1e9:.3f} GMACs: {cost['bops'] / 1e9:.1f} GBOPs vs "
            f"{cost['float_bops'] / 1e9:.1f} float (32 x 32 bits): {cost['bops_reduction']:.2f}x fewer")


def report_quantization(trainer, logbook, is_main: bool) -> None:
    """Print the size / BOPs summary and write quant_report.json (quantized models only)."""
    report = trainer.quant_report() if is_main else None
    if report is not None:
        logbook.write_json("quant_report.json", report)
        print(size_table(report), flush=True)


def tables(args: argparse.Namespace, cfg: dict, world, logbook, data_root: Path) -> int:
    """Assemble the paper's tables from the finished experiment --exp_id (no training)."""
    from quantlab.engine.errors import ConfigError
    from quantlab.mqat.tables import NAMES, save_tables, write_tables
    from quantlab.sensitivity.tables import FISHER_NAMES, PTQ_NAMES, detr_fisher, detr_ptq
    kinds = {"mqat": NAMES, "ptq": PTQ_NAMES, "fisher": FISHER_NAMES}
    if args.exp_id is None:
        raise ConfigError(f"--mode table reads a finished --mode {', '.join(kinds)} experiment: pass its --exp_id")
    kind = next((k for k in kinds if (logbook.root / k).is_dir()), None)
    if kind is None:
        raise ConfigError(f"--mode table reads a finished --mode {', '.join(kinds)} experiment "
                          f"(none of {', '.join(str(logbook.root / k) for k in kinds)} found)")
    names = list(kinds[kind]) if args.table == "all" else [args.table]
    if not set(names) <= set(kinds[kind]):
        raise ConfigError(f"--table {args.table}: experiment {args.exp_id} is a --mode {kind} experiment")
    task = importlib.import_module(f"problems.{args.problem}.{args.topology}").build_task(cfg, data_root)
    if kind == "mqat":
        markdown = write_tables(logbook.root, names, list(task.groups), task.best_metric, task.published,
                                world.is_main)
    elif kind == "ptq":
        markdown = save_tables(logbook.root, [detr_ptq(logbook.root, task.best_metric, task.published,
                                                        cfg["ptq"]["schemes"])], world.is_main)
    else:
        markdown = save_tables(logbook.root, [detr_fisher(logbook.root, task.best_metric, task.critical_metric,
                                                           cfg["fisher"]["schemes"])],
                               world.is_main)
    if world.is_main:
        print(f"{markdown}\n\ntables written to {logbook.root / 'tables'}", flush=True)
    return 0


#: modes whose runs train (they need a training split of at least one batch per rank)
TRAINS = ("train", "sensitivity", "mqat", "hawq", "fisher")
#: modes that start from the float checkpoint `quantize.init` and run child experiments
SEARCHES = ("sensitivity", "mqat", "hawq", "ptq", "fisher")


def configure(args: argparse.Namespace) -> tuple[dict, Path, Path]:
    """The checked configuration and the storage roots; nothing is created but the logs
    root (checked writable). Runs before Horovod starts, identically on every rank."""
    from quantlab.engine import preflight
    from quantlab.engine.config import build_config, resume_config
    from quantlab.engine.errors import ConfigError
    from quantlab.engine.logbook import Logbook

    topo_dir = REPO / "problems" / args.problem / args.topology
    if not (topo_dir / "config.yaml").is_file():
        known = sorted(f"{p.parent.name}/{p.name}" for p in (REPO / "problems").glob("*/*") if (p / "config.yaml").is_file())
        raise ConfigError(f"{topo_dir}: no such problem/topology (available: {', '.join(known)})")
    data_root, logs_root = storage_roots()
    defaults = REPO / "cfg" / "defaults.yaml"
    if args.exp_id is None:
        cfg = build_config(defaults, topo_dir / "config.yaml", args.profile, args.overrides)
    else:
        saved = Logbook(logs_root, args.problem, args.topology, args.exp_id, writer=False)
        cfg = resume_config(defaults, topo_dir / "config.yaml", saved.load_config(), saved.root / "config.yaml",
                            args.overrides)
    preflight.recipe(cfg["quantize"])
    preflight.writable_folder(logs_root, "the logs root (cfg/hard_storage.json)")
    return cfg, data_root, logs_root


def run(args: argparse.Namespace) -> int:
    from quantlab.engine import distributed as dist, preflight
    from quantlab.engine.errors import ConfigError
    from quantlab.engine.logbook import Logbook

    cfg, data_root, logs_root = configure(args)
    world = dist.init(cfg["engine"]["threads"], cfg["engine"]["stall_timeout"])
    preflight.device(cfg["engine"]["device"])
    device = dist.device_for(world, cfg["engine"]["device"])
    task = importlib.import_module(f"problems.{args.problem}.{args.topology}").build_task(cfg, data_root)
    if args.mode == "table":
        return tables(args, cfg, world, Logbook(logs_root, args.problem, args.topology, args.exp_id or 0,
                                                writer=world.is_main), data_root)

    note = dist.on_main(world, "data.ready", task.prepare_data)
    if note and world.is_main:
        print(note, flush=True)
    preflight.evaluation_split(task, cfg["engine"]["eval_split"])
    if args.mode in TRAINS:
        training = cfg["quantize"]["child_training"] if args.mode in SEARCHES else {}
        preflight.training_split(task, training.get("batch_size", cfg["training"]["batch_size"]), world)
    resuming = args.exp_id is not None
    last = Logbook(logs_root, args.problem, args.topology, args.exp_id, writer=False).saves / "last.pt" if resuming \
        else None
    resume = last if args.mode == "train" and last is not None and last.is_file() else None
    # the weights to start from: a new run's, a search's, or a continued run's that saved
    # nothing yet; test and export of an experiment read the checkpoint --ckpt names
    fresh = not resuming or args.mode in SEARCHES or (args.mode == "train" and resume is None)
    start = resolve_init(cfg["quantize"]["init"], logs_root, args) if fresh else None
    if args.mode in SEARCHES and start is None:
        raise ConfigError(f"--mode {args.mode} starts from a float checkpoint: set quantize.init")

    exp_id = args.exp_id if resuming else dist.on_main(
        world, "exp.claim", lambda: Logbook.claim(logs_root, args.problem, args.topology))
    logbook = Logbook(logs_root, args.problem, args.topology, exp_id, writer=world.is_main)
    with contextlib.ExitStack() as owned:
        if args.mode in TRAINS + SEARCHES:  # one writing run per experiment; clear its stale temp files
            stale = dist.on_main(world, "exp.lock", lambda: owned.enter_context(logbook.lock()))
            if stale and world.is_main:
                print(f"removed {len(stale)} temporary file(s) an interrupted run left in {logbook.root}", flush=True)
        try:
            if not resuming:
                logbook.create(cfg)
            if world.is_main:
                where = logbook.root.relative_to(REPO) if logbook.root.is_relative_to(REPO) else logbook.root
                print(f"experiment {where} ({args.mode}, {world.size} rank{'s' if world.size > 1 else ''}, "
                      f"profile {cfg['profile']})", flush=True)
            run_mode(args, cfg, world, logbook, task, device, start, resume)
        except BaseException:
            if not resuming and logbook.discard():
                print(f"removed {logbook.root}: the run failed before producing anything", file=sys.stderr, flush=True)
            raise
    return 0


def run_mode(args: argparse.Namespace, cfg: dict, world, logbook, task, device, start: Path | None,
             resume: Path | None) -> None:
    from quantlab.engine.trainer import Trainer

    if args.mode in SEARCHES:
        from quantlab.mqat.pipeline import run_mqat, run_sensitivity
        from quantlab.sensitivity.fisher_qat import run_fisher
        from quantlab.sensitivity.pipeline import run_hawq
        from quantlab.sensitivity.ptq import run_ptq
        modes = {"sensitivity": run_sensitivity, "mqat": run_mqat, "hawq": run_hawq, "ptq": run_ptq,
                 "fisher": run_fisher}
        modes[args.mode](task, cfg, world, logbook, device, start)
        return
    trainer = Trainer(task, cfg, world, logbook, device, start, resume)
    try:
        if args.mode == "train":
            report_quantization(trainer, logbook, world.is_main)
            if resume is not None:
                trainer.resume()
                if args.overrides:
                    logbook.write_config(cfg)  # only once the checkpoint has loaded under it
            trainer.fit()
            return
        source = trainer.load_for_test(args.ckpt)
        trainer.sync()
        trainer.calibrate()
        report_quantization(trainer, logbook, world.is_main)
        if args.mode == "export":
            if world.is_main:
                folder = logbook.root / "export"
                sizes = trainer.export(folder)
                print(f"exported {source}: " + ", ".join(f"{folder / k} ({v / 2**20:.3f} MiB)"
                                                         for k, v in sizes.items()), flush=True)
            return
        name = Path(args.ckpt).stem if not args.ckpt.isdigit() else f"epoch_{int(args.ckpt):04d}"
        split = cfg["engine"]["eval_split"]
        if world.is_main:
            print(f"testing {source} on the {split} split", flush=True)
        trainer.evaluate(split, f"test_{name}")
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sys.path.insert(0, str(REPO))
    import horovod.torch as hvd

    from quantlab.engine.process import report
    from quantlab.signals import Stopped, stop_on_signals
    stop_on_signals()
    try:
        return run(args)
    except (Exception, Stopped) as exc:
        return report(exc, hvd.rank() if hvd.is_initialized() else None)


if __name__ == "__main__":
    sys.exit(main())
