"""The MQAT paper's tables from a finished `--mode mqat` experiment, ours beside the
published numbers: the module cube (T-A2), one module's bit-width ablation (T-A3), and
accuracy vs compression of uniform QAT / HAWQ-V3 / MQAT (T-A4). A problem adds its own
(SwissCube: float vs MQAT by depth bin, T-A1) from the same files.

Published numbers come from the task (`Task.published`, same metric as ours); a missing
experiment file or published entry leaves its cells empty ("-"), never invented.
"""
from __future__ import annotations

from pathlib import Path

from quantlab.quant.layers import FLOAT_BITS
from quantlab.records import Table, TableSpec, read_json


def results(folder: Path, name: str) -> dict:
    """One of the files `--mode mqat` records under `mqat/` ({} until it is written)."""
    return read_json(folder / "mqat" / name)


def bits_label(bits: dict[str, int], modules: list[str]) -> str:
    """E.g. 8-2-8 for the modules in order, FP for a module left in float."""
    return "-".join("FP" if bits[m] == FLOAT_BITS else str(bits[m]) for m in modules)


def cube(folder: Path, task, cfg: dict) -> Table:
    modules, metric, published = list(task.groups), task.best_metric, task.published
    found = results(folder, "cube.json")
    paper = {tuple(row[m] for m in modules): row["metric"] for row in published.get("cube", [])}
    paper_float = paper.get(tuple(FLOAT_BITS for _ in modules))
    start = found.get("float_metric")
    rows = []
    for row in [{"bits": {m: FLOAT_BITS for m in modules}, "metric": start}] + found.get("cube", []):
        key = tuple(row["bits"][m] for m in modules)
        mine, theirs = row["metric"], paper.get(key)
        rows.append([*key, mine, None if mine is None or start is None else mine - start, theirs,
                     None if theirs is None or paper_float is None else theirs - paper_float])
    return Table("cube", f"Module cube at {cfg['mqat']['probe_bits']} bits ({FLOAT_BITS} = float), {metric}",
                 [*modules, "ours", "ours change", "paper", "paper change"], rows)


def module_bits(folder: Path, task, cfg: dict) -> Table:
    published = task.published
    base = results(folder, "baselines.json")
    ablation = base.get("ablation", {})
    module = ablation.get("module") or published.get("module_bits", {}).get("module", "module")
    paper = {int(k): v for k, v in published.get("module_bits", {}).get("rows", {}).items()}
    rows = [["FP", 1.0, results(folder, "cube.json").get("float_metric"), paper.get(FLOAT_BITS)],
            ["FP fine-tuned", 1.0, base.get("float_finetune"), None]]
    for row in ablation.get("rows", []):
        rows.append([row["bits"], row["compression"], row["metric"], paper.get(row["bits"])])
    return Table("module_bits", f"{module} alone at each bit-width, other modules float, {task.best_metric}",
                 [f"{module} bits", "compression", "ours", "paper"], rows)


def compression(folder: Path, task, cfg: dict) -> Table:
    """Each of our points beside the paper's point of the same method nearest to it: to
    our compression, or for HAWQ-V3 to the budget it was run at (the paper names its
    HAWQ-V3 points by budget, e.g. 4x)."""
    modules, published = list(task.groups), task.published
    base, result = results(folder, "baselines.json"), results(folder, "result.json")
    # (method, bits, compression, metric, the compression the paper's point is matched to)
    ours: list[tuple[str, str, float, float | None, float]] = [
        ("float", "FP", 1.0, results(folder, "cube.json").get("float_metric"), 1.0),
        ("float fine-tuned", "FP", 1.0, base.get("float_finetune"), 1.0)]
    for row in base.get("uniform", []):
        ours.append((f"{row['algorithm'].upper()} uniform", str(row["bits"]), row["compression"], row["metric"],
                     row["compression"]))
    for row in base.get("hawq", []):
        ours.append(("HAWQ-V3", "per layer", row["compression"], row.get("metric"), row["budget"]))
    if result:
        ours.append(("MQAT", bits_label(result["bits"], modules) + " (" + " > ".join(result["order"]) + ")",
                     result["compression"], result["metric"], result["compression"]))
    rows = []
    for method, bits, ratio, value, target in ours:
        points = [p for p in published.get("compression", []) if p["method"] == method]
        near = min(points, key=lambda p: abs(p["compression"] - target)) if points else None
        rows.append([method, bits, ratio, value, near and near["compression"], near and near["metric"]])
    return Table("compression", f"Accuracy vs compression, {task.best_metric} (paper: its point of the method "
                 "nearest our compression, or HAWQ-V3's budget)", ["method", f"bits ({'-'.join(modules)})",
                                                                   "compression", "ours", "paper compression",
                                                                   "paper"], rows)


TABLES = (TableSpec("cube", "mqat", cube), TableSpec("module_bits", "mqat", module_bits),
          TableSpec("compression", "mqat", compression))
