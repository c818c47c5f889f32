"""The output-sensitivity paper's Table 1 layout from a finished `--mode ptq` experiment:
rows = average weight bits (float, the reference bits, each target), columns = schemes,
ours beside the published numbers (`Task.published["detr_ptq"]`)."""
from __future__ import annotations

import json
from pathlib import Path

from quantlab.mqat.tables import Table

NAMES = ("detr_ptq",)


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
