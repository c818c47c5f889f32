"""DETR's tables from finished experiments: `detr_ptq`, Table 1 of the output-sensitivity
paper from `--mode ptq` (rows = average weight bits: float, the reference bits, each
target; columns = schemes; ours beside `published.yaml`'s `detr_ptq`), and `detr_fisher`
from `--mode fisher` (overall and critical metric of each allocation scheme with and
without the Fisher-trace regularizer; that paper published no table)."""
from __future__ import annotations

from pathlib import Path

from quantlab.quant.layers import FLOAT_BITS
from quantlab.records import Table, TableSpec, read_json


def detr_ptq(folder: Path, task, cfg: dict) -> Table:
    metric, schemes = task.best_metric, cfg["ptq"]["schemes"]
    results = read_json(folder / "ptq" / "results.json")
    paper = task.published.get("detr_ptq", {})
    targets = sorted({r["target"] for r in results.values() if r["scheme"] != "float"}, reverse=True)
    header = ["avg bits"] + [f"{s} {source}" for s in schemes for source in ("ours", "paper")]
    rows = []
    for label, target in [("float", None)] + [(str(t), t) for t in targets]:
        row: list = [label]
        for scheme in schemes:
            key = f"float@{FLOAT_BITS}" if target is None else f"{scheme}@{target}"
            show = target is not None or scheme == "uniform"
            ours = results.get(key, {}).get("metrics", {}).get(metric) if show else None
            theirs = paper.get(label, {}).get(scheme) if show else None
            row += [ours, theirs]
        rows.append(row)
    return Table("detr_ptq", f"Weight-only PTQ, {metric} by average bits (float row: uniform columns)", header, rows)


def detr_fisher(folder: Path, task, cfg: dict) -> Table:
    metric, critical, schemes = task.best_metric, task.critical_metric, cfg["fisher"]["schemes"]
    results = read_json(folder / "fisher" / "results.json")
    reference = read_json(folder / "fisher" / "allocations.json").get("float", {}).get("metrics", {})
    rows = [["float", None, float(FLOAT_BITS), reference.get(metric), reference.get(critical), None, None, None]]
    order = {s: i for i, s in enumerate(schemes)}
    for entry in sorted(results.values(), key=lambda e: (order.get(e["scheme"], len(order)), e["regularizer"])):
        ours = entry["metrics"]
        rows.append([entry["scheme"], f"{entry['regularizer']:g}", entry["average_bits"], ours.get(metric),
                     ours.get(critical), _change(ours.get(metric), reference.get(metric)),
                     _change(ours.get(critical), reference.get(critical)), entry.get("same_as")])
    return Table("detr_fisher", f"Mixed-precision QAT: {metric} and {critical} by allocation scheme and "
                 "Fisher-trace regularizer lambda (changes against float)",
                 ["scheme", "lambda", "avg bits", metric, critical, f"{metric} change", f"{critical} change",
                  "bits of"], rows)


def _change(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


TABLES = (TableSpec("detr_ptq", "ptq", detr_ptq), TableSpec("detr_fisher", "fisher", detr_fisher))
