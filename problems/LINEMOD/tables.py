"""LINEMOD's own table: ADD(-S)-0.1d per object, float vs MQAT, from the metrics `--mode
mqat` recorded. The papers publish no per-object numbers for the quantized ZebraPose, so
this table has no paper column."""
from __future__ import annotations

from pathlib import Path

from quantlab.metrics.intervals import Evidence
from quantlab.mqat.tables import bits_label, headline, results
from quantlab.records import Table, TableSpec


def objects(folder: Path, task, cfg: dict) -> Table:
    family = task.best_metric.rsplit("/", 1)[0]
    names = [*cfg["data"]["objects"], "mean"]
    result = results(folder, "result.json")
    point = headline(result)
    label = "MQAT " + bits_label(point["bits"], list(task.groups)) if point else "MQAT"
    evidence, reference = Evidence(folder, task, cfg), result.get("float_evaluation")
    rows = [[name, *[evidence.estimate(measured.get(f"{family}/{o}"), where, f"{family}/{o}", reference)
                     for o in names]]
            for name, measured, where in (("float", result.get("float_metrics", {}), reference),
                                          (label, point.get("metrics", {}), point.get("evaluation")))]
    return Table("objects", f"{family} per object, float vs MQAT (ours)", ["model", *names], rows)


OBJECTS = TableSpec("objects", "mqat", objects)
