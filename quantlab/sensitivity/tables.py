"""The DETR papers' tables from finished experiments: `detr_ptq`, Table 1 of the
output-sensitivity paper from `--mode ptq` (rows = average weight bits: float, the
reference bits, each target; columns = schemes; ours beside `Task.published["detr_ptq"]`),
and `detr_fisher` from `--mode fisher` (overall and critical metric of each allocation
scheme with and without the Fisher-trace regularizer; that paper published no table)."""
from __future__ import annotations

import json
from pathlib import Path

from quantlab.mqat.tables import Table

PTQ_NAMES = ("detr_ptq",)
FISHER_NAMES = ("detr_fisher",)


def detr_ptq(folder: Path, metric: str, published: dict, schemes: list[str]) -> Table:
    path = folder / "ptq" / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    paper = published.get("detr_ptq", {})
    targets = sorted({r["target"] for r in results.values() if r["scheme"] not in ("float",)}, reverse=True)
    header = ["avg bits"] + [f"{s} {source}" for s in schemes for source in ("ours", "paper")]
    rows = []
    for label, target in [("float", 32)] + [(str(t), t) for t in targets]:
        row: list = [label]
        for scheme in schemes:
            key = "float@32" if target == 32 else f"{scheme}@{target}"
            show = target != 32 or scheme == "uniform"
            ours = results.get(key, {}).get("metrics", {}).get(metric) if show else None
            theirs = paper.get(label, {}).get(scheme) if show else None
            row += [ours, theirs]
        rows.append(row)
    return Table("detr_ptq", f"Weight-only PTQ, {metric} by average bits (float row: uniform columns)", header, rows)


def detr_fisher(folder: Path, metric: str, critical: str, schemes: list[str]) -> Table:
    def read(name: str) -> dict:
        path = folder / "fisher" / name
        return json.loads(path.read_text()) if path.is_file() else {}
    results, plans = read("results.json"), read("allocations.json")
    reference = plans.get("float", {}).get("metrics", {})
    rows = [["float", None, 32.0, reference.get(metric), reference.get(critical), None, None, None]]
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
