"""The MQAT paper's tables from a finished `--mode mqat` experiment, ours beside the
published numbers: the module cube (T-A2), one module's bit-width ablation (T-A3), and
accuracy vs compression of uniform QAT / HAWQ-V3 / MQAT (T-A4). A problem adds its own
(SwissCube: float vs MQAT by depth bin, T-A1) from the same files.

Published numbers come from the task (`Task.published`, same metric as ours); a missing
experiment file or published entry leaves its cells empty ("-"), never invented.
"""
from __future__ import annotations

from pathlib import Path

from quantlab.metrics.intervals import Evidence
from quantlab.mqat.figures import compression_figure
from quantlab.quant.layers import FLOAT_BITS
from quantlab.records import Table, TableSpec, read_json


def results(folder: Path, name: str) -> dict:
    """One of the files `--mode mqat` records under `mqat/` ({} until it is written)."""
    return read_json(folder / "mqat" / name)


def bits_label(bits: dict[str, int], modules: list[str]) -> str:
    """E.g. 8-2-8 for the modules in order, FP for a module left in float."""
    return "-".join("FP" if bits[m] == FLOAT_BITS else str(bits[m]) for m in modules)


def nearest_point(published: dict, method: str, target: float) -> tuple[float | None, float | None]:
    """The paper's (compression, metric) of `method` nearest to compression `target`, or (None, None)."""
    points = [p for p in published.get("compression", []) if p["method"] == method]
    if not points:
        return None, None
    near = min(points, key=lambda p: abs(p["compression"] - target))
    return near["compression"], near["metric"]


def cube(folder: Path, task, cfg: dict) -> Table:
    modules, metric, published = list(task.groups), task.best_metric, task.published
    found, evidence = results(folder, "cube.json"), Evidence(folder, task, cfg)
    paper = {tuple(row[m] for m in modules): row["metric"] for row in published.get("cube", [])}
    paper_float = paper.get(tuple(FLOAT_BITS for _ in modules))
    start, reference = found.get("float_metric"), found.get("float_evaluation")
    rows = []
    for row in [{"bits": {m: FLOAT_BITS for m in modules}, "metric": start, "evaluation": reference}] \
            + found.get("cube", []):
        key = tuple(row["bits"][m] for m in modules)
        mine, theirs, where = row["metric"], paper.get(key), row.get("evaluation")
        rows.append([*key, evidence.estimate(mine, where, metric, reference),
                     evidence.change(mine, where, start, reference, metric), theirs,
                     None if theirs is None or paper_float is None else theirs - paper_float])
    return Table("cube", f"Module cube at {cfg['mqat']['probe_bits']} bits ({FLOAT_BITS} = float), {metric}",
                 [*modules, "ours", "ours change", "paper", "paper change"], rows)


def module_bits(folder: Path, task, cfg: dict) -> Table:
    published, metric = task.published, task.best_metric
    base, start, evidence = results(folder, "baselines.json"), results(folder, "cube.json"), Evidence(folder, task, cfg)
    ablation, reference = base.get("ablation", {}), start.get("float_evaluation")
    module = ablation.get("module") or published.get("module_bits", {}).get("module", "module")
    paper = {int(k): v for k, v in published.get("module_bits", {}).get("rows", {}).items()}
    rows = [["FP", 1.0, evidence.estimate(start.get("float_metric"), reference, metric), paper.get(FLOAT_BITS)],
            ["FP fine-tuned", 1.0, evidence.estimate(base.get("float_finetune"), base.get("float_finetune_evaluation"),
                                                     metric, reference), None]]
    for row in ablation.get("rows", []):
        rows.append([row["bits"], row["compression"], evidence.estimate(row["metric"], row.get("evaluation"), metric,
                                                                        reference), paper.get(row["bits"])])
    return Table("module_bits", f"{module} alone at each bit-width, other modules float, {task.best_metric}",
                 [f"{module} bits", "compression", "ours", "paper"], rows)


def compression(folder: Path, task, cfg: dict) -> Table:
    """Each of our points beside the paper's point of the same method nearest to it: to
    our compression, or for HAWQ-V3 to the budget it was run at (the paper names its
    HAWQ-V3 points by budget, e.g. 4x)."""
    modules, published, metric = list(task.groups), task.published, task.best_metric
    base, result, start = results(folder, "baselines.json"), results(folder, "result.json"), results(folder, "cube.json")
    evidence, reference = Evidence(folder, task, cfg), start.get("float_evaluation")
    # (method, bits, compression, metric, its evaluation, the compression the paper's point is matched to)
    ours: list[tuple[str, str, float, float | None, str | None, float]] = [
        ("float", "FP", 1.0, start.get("float_metric"), reference, 1.0),
        ("float fine-tuned", "FP", 1.0, base.get("float_finetune"), base.get("float_finetune_evaluation"), 1.0)]
    for row in base.get("uniform", []):
        ours.append((f"{row['algorithm'].upper()} uniform", str(row["bits"]), row["compression"], row["metric"],
                     row.get("evaluation"), row["compression"]))
    for row in base.get("hawq", []):
        ours.append(("HAWQ-V3", "per layer", row["compression"], row.get("metric"), row.get("evaluation"),
                     row["budget"]))
    points = result.get("points", [])
    for point in points:
        ours.append(("MQAT", bits_label(point["bits"], modules) + " (" + " > ".join(result["order"]) + ")",
                     point["compression"], point["metric"], point.get("evaluation"), point["compression"]))
    # the differences are taken from the MQAT point of the smallest budget (the paper's headline)
    head = headline(result)
    rows = []
    for index, (method, bits, ratio, value, where, target) in enumerate(ours):
        versus = evidence.change(value, where, head.get("metric"), head.get("evaluation"), metric) \
            if index != len(ours) - len(points) else None  # not against itself
        rows.append([method, bits, ratio, evidence.estimate(value, where, metric, reference), versus,
                     *nearest_point(published, method, target)])
    notes = [f"HAWQ-V3 at {row['budget']:g}x traces: {row['trace_note']}" for row in base.get("hawq", [])
             if row.get("trace_note")]
    if len(points) > 1:
        notes.insert(0, f"ours - MQAT: the paired difference from MQAT's point of the smallest budget "
                        f"(>= {head['budget']:g}x)")
    return Table("compression", f"Accuracy vs compression, {metric} (paper: its point of the method "
                 "nearest our compression, or HAWQ-V3's budget)", ["method", f"bits ({'-'.join(modules)})",
                                                                   "compression", "ours", "ours - MQAT",
                                                                   "paper compression", "paper"], rows, notes)


def headline(result: dict) -> dict:
    """The MQAT point of the smallest budget (T-A1's `WDR*`, T-A6's MQAT row): {} until
    `--mode mqat` has written its result."""
    return (result.get("points") or [{}])[0]


TABLES = (TableSpec("cube", "mqat", cube), TableSpec("module_bits", "mqat", module_bits),
          TableSpec("compression", "mqat", compression, compression_figure))
