"""SwissCube's own table: float vs MQAT by depth bin (the WDR rows of MQAT's T-A1), from
the metrics `--mode mqat` recorded, beside the published numbers."""
from __future__ import annotations

from pathlib import Path

from quantlab.metrics.intervals import Evidence
from quantlab.metrics.pose import BIN_NAMES
from quantlab.mqat.tables import bits_label, headline, results
from quantlab.records import Table, TableSpec


def depth(folder: Path, task, cfg: dict) -> Table:
    """`best_metric` (e.g. ADI-0.1d/all) for all images and each depth bin."""
    family = task.best_metric.rsplit("/", 1)[0]
    result = results(folder, "result.json")
    point = headline(result)
    paper = task.published.get("depth", {})
    bins = [*BIN_NAMES, "all"]  # T-A1's column order
    label = "MQAT " + bits_label(point["bits"], list(task.groups)) if point else "MQAT"
    evidence, reference = Evidence(folder, task, cfg), result.get("float_evaluation")
    rows = []
    for name, key, measured, where in (("float", "float", result.get("float_metrics", {}), reference),
                                       (label, "mqat", point.get("metrics", {}), point.get("evaluation"))):
        rows.append([name, "ours", *[evidence.estimate(measured.get(f"{family}/{b}"), where, f"{family}/{b}",
                                                       reference) for b in bins]])
        rows.append([name, "paper", *[paper.get(key, {}).get(b) for b in bins]])
    return Table("depth", f"{family} by depth bin, float vs MQAT", ["model", "source", *bins], rows)


DEPTH = TableSpec("depth", "mqat", depth)
