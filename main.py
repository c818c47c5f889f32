"""quantlab command line: train, quantize and test a problem/topology pair.

    horovodrun -np N python main.py --problem SwissCube --topology Widedepth --mode train
    python main.py --problem SwissCube --topology Widedepth --mode test --exp_id 0 --ckpt best
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
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
    kind = next((k for k in kinds if (logbook.root / k).is_dir()), None)
    if args.exp_id is None or kind is None:
        raise ConfigError(f"--mode table reads a finished --mode {', '.join(kinds)} experiment: pass its --exp_id "
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


def run(args: argparse.Namespace) -> int:
    from quantlab.engine import distributed as dist
    from quantlab.engine.config import apply_overrides, build_config
    from quantlab.engine.errors import ConfigError
    from quantlab.engine.logbook import Logbook
    from quantlab.engine.trainer import Trainer

    topo_dir = REPO / "problems" / args.problem / args.topology
    if not (topo_dir / "config.yaml").is_file():
        known = sorted(f"{p.parent.name}/{p.name}" for p in (REPO / "problems").glob("*/*") if (p / "config.yaml").is_file())
        raise ConfigError(f"{topo_dir}: no such problem/topology (available: {', '.join(known)})")
    data_root, logs_root = storage_roots()

    if args.exp_id is None:
        cfg = build_config(REPO / "cfg" / "defaults.yaml", topo_dir / "config.yaml", args.profile, args.overrides)
    else:
        probe = Logbook(logs_root, args.problem, args.topology, args.exp_id, writer=False)
        cfg = apply_overrides(probe.load_config(), args.overrides)
    world = dist.init(cfg["engine"]["threads"])

    exp_id = args.exp_id
    if exp_id is None:
        exp_id = dist.broadcast_object(
            Logbook.next_id(logs_root, args.problem, args.topology) if world.is_main else None, "exp_id")
    logbook = Logbook(logs_root, args.problem, args.topology, exp_id, writer=world.is_main)
    resuming = args.exp_id is not None
    if args.mode == "table":
        return tables(args, cfg, world, logbook, data_root)
    if not resuming or (args.overrides and args.mode == "train"):
        logbook.create(cfg)  # a new experiment, or the overrides a continued run uses
    if world.is_main:
        print(f"experiment {logbook.root.relative_to(REPO) if logbook.root.is_relative_to(REPO) else logbook.root} "
              f"({args.mode}, {world.size} rank{'s' if world.size > 1 else ''}, profile {cfg['profile']})", flush=True)

    task = importlib.import_module(f"problems.{args.problem}.{args.topology}").build_task(cfg, data_root)
    if world.is_main:
        note = task.prepare_data()
        if note:
            print(note, flush=True)
    dist.barrier()

    device = dist.device_for(world, cfg["engine"]["device"])
    if args.mode in ("sensitivity", "mqat", "hawq", "ptq", "fisher"):
        from quantlab.mqat.pipeline import run_mqat, run_sensitivity
        from quantlab.sensitivity.fisher_qat import run_fisher
        from quantlab.sensitivity.pipeline import run_hawq
        from quantlab.sensitivity.ptq import run_ptq
        start = resolve_init(cfg["quantize"]["init"], logs_root, args)
        if start is None:
            raise ConfigError(f"--mode {args.mode} starts from a float checkpoint: set quantize.init")
        modes = {"sensitivity": run_sensitivity, "mqat": run_mqat, "hawq": run_hawq, "ptq": run_ptq,
                 "fisher": run_fisher}
        modes[args.mode](task, cfg, world, logbook, device, start)
        return 0
    init = resolve_init(cfg["quantize"]["init"], logs_root, args) if not resuming else None
    last = logbook.saves / "last.pt"
    resume = last if resuming and args.mode == "train" and last.is_file() else None
    trainer = Trainer(task, cfg, world, logbook, device, init, resume)
    try:
        if args.mode == "train":
            report_quantization(trainer, logbook, world.is_main)
            if resume is not None:
                trainer.resume()
            trainer.fit()
        else:
            source = trainer.load_for_test(args.ckpt)
            trainer.sync()
            trainer.calibrate()
            report_quantization(trainer, logbook, world.is_main)
            name = Path(args.ckpt).stem if not args.ckpt.isdigit() else f"epoch_{int(args.ckpt):04d}"
            split = cfg["engine"]["eval_split"]
            if args.mode == "export":
                if world.is_main:
                    folder = logbook.root / "export"
                    sizes = trainer.export(folder)
                    print(f"exported {source}: " + ", ".join(f"{folder / k} ({v / 2**20:.3f} MiB)"
                                                             for k, v in sizes.items()), flush=True)
                return 0
            if world.is_main:
                print(f"testing {source} on the {split} split", flush=True)
            trainer.evaluate(split, f"test_{name}")
    finally:
        trainer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sys.path.insert(0, str(REPO))
    from quantlab.engine.errors import QuantlabError
    rank = "?"
    try:
        import horovod.torch as hvd
        try:
            return run(args)
        finally:
            rank = str(hvd.rank()) if hvd.is_initialized() else "?"
    except QuantlabError as exc:
        print(f"error (rank {rank}): {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"interrupted (rank {rank})", file=sys.stderr, flush=True)
    except Exception:
        print(f"error (rank {rank}):\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
