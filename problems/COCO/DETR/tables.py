"""DETR's tables from finished experiments: `detr_ptq`, Table 1 of the output-sensitivity
paper from `--mode ptq` (rows = average weight bits: float, the reference bits, each
target; columns = schemes; ours beside `published.yaml`'s `detr_ptq`), and `detr_fisher`
from `--mode fisher` (overall and critical metric of each allocation scheme with and
without the Fisher-trace regularizer; that paper published no table)."""
from __future__ import annotations

from pathlib import Path

from quantlab.metrics.intervals import Evidence
from quantlab.quant.layers import FLOAT_BITS
from quantlab.records import Table, TableSpec, finished
from quantlab.sensitivity.traces import Trace, summary


def detr_ptq(folder: Path, task, cfg: dict) -> Table:
    metric, schemes = task.best_metric, cfg["ptq"]["schemes"]
    results, evidence = finished(folder / "ptq" / "results.json"), Evidence(folder, task, cfg)
    reference = results.get(f"float@{FLOAT_BITS}", {}).get("evaluation")
    paper = task.published.get("detr_ptq", {})
    targets = sorted({r["target"] for r in results.values() if r["scheme"] != "float"}, reverse=True)
    header = ["avg bits"] + [f"{s} {source}" for s in schemes for source in ("ours", "paper")]
    rows = []
    for label, target in [("float", None)] + [(str(t), t) for t in targets]:
        row: list = [label]
        for scheme in schemes:
            key = f"float@{FLOAT_BITS}" if target is None else f"{scheme}@{target}"
            show = target is not None or scheme == "uniform"
            entry = results.get(key, {})
            ours = entry.get("metrics", {}).get(metric) if show else None
            theirs = paper.get(label, {}).get(scheme) if show else None
            row += [evidence.estimate(ours, entry.get("evaluation"), metric, reference), theirs]
        rows.append(row)
    rule = cfg["ptq"]["negative_traces"]
    notes = [f"traces of {scheme}: {note}" for scheme, records in finished(folder / "ptq" / "traces.json").items()
             if (note := summary({k: Trace.from_record(r) for k, r in records.items()}, rule, "ptq.negative_traces"))]
    return Table("detr_ptq", f"Weight-only PTQ, {metric} by average bits (float row: uniform columns)", header, rows,
                 notes)


def detr_fisher(folder: Path, task, cfg: dict) -> Table:
    metric, critical, schemes = task.best_metric, task.critical_metric, cfg["fisher"]["schemes"]
    results = finished(folder / "fisher" / "results.json")
    start = finished(folder / "fisher" / "allocations.json").get("float", {})
    reference, base, evidence = start.get("evaluation"), start.get("metrics", {}), Evidence(folder, task, cfg)
    rows = [["float", None, float(FLOAT_BITS), evidence.estimate(base.get(metric), reference, metric),
             evidence.estimate(base.get(critical), reference, critical), None, None, None]]
    order = {s: i for i, s in enumerate(schemes)}
    for entry in sorted(results.values(), key=lambda e: (order.get(e["scheme"], len(order)), e["regularizer"])):
        ours, where = entry["metrics"], entry.get("evaluation")
        rows.append([entry["scheme"], f"{entry['regularizer']:g}", entry["average_bits"],
                     *[evidence.estimate(ours.get(m), where, m, reference) for m in (metric, critical)],
                     *[evidence.change(ours.get(m), where, base.get(m), reference, m) for m in (metric, critical)],
                     entry.get("same_as")])
    return Table("detr_fisher", f"Mixed-precision QAT: {metric} and {critical} by allocation scheme and "
                 "Fisher-trace regularizer lambda (changes against float)",
                 ["scheme", "lambda", "avg bits", metric, critical, f"{metric} change", f"{critical} change",
                  "bits of"], rows)


TABLES = (TableSpec("detr_ptq", "ptq", detr_ptq), TableSpec("detr_fisher", "fisher", detr_fisher))
