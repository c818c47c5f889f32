"""The `deploy` table: each deployed checkpoint's accuracy (fake-quant, deployed, with
the paired differences), latency, peak memory and file sizes, beside the paper's."""
from __future__ import annotations

from pathlib import Path

from quantlab.deploy.kernels import kind
from quantlab.metrics.intervals import Evidence
from quantlab.records import Table, read_json

HEADER = ["model", "runtime", "metric", "vs torch model", "vs float", "p50 ms", "p90 ms", "session MiB", "file MiB"]


def _mib(size: int | None) -> float | None:
    return None if size is None else size / 2 ** 20


def _rows(folder: Path, report: dict, evidence: Evidence, metric: str) -> list[list]:
    """float (where known), fake-quant, the same weights in torch eager and onnxruntime fp32,
    and the deployed int8 model; differences paired over the test images."""
    name, latency, sizes = report["name"], report["latency"], report["sizes"]
    fake, reference = report["torch"], report.get("reference")
    values = {e: read_json(folder / e / "metrics.json").get(metric)
              for e in (fake, report["float_graph"], report["deployed"], reference) if e}

    def scored(evaluation: str) -> list:
        value = values[evaluation]
        return [evidence.estimate(value, evaluation, metric),
                None if evaluation == fake else evidence.change(value, evaluation, values[fake], fake, metric),
                evidence.change(value, evaluation, values[reference], reference, metric) if reference else None]

    def timed(label: str) -> list:
        found = latency[label]
        return [found["p50_ms"], found["p90_ms"], found.get("session_mib")]

    rows = []
    if reference:
        rows.append([f"{name}: float", "its evaluation", evidence.estimate(values[reference], reference, metric),
                     None, None, None, None, None, None])
    rows.append([f"{name}: {'fake-quant' if report['quantized'] else 'float'}", "torch", *scored(fake), None, None,
                 None, _mib(report.get("packed_size"))])
    rows.append([f"{name}: same weights", "torch eager fp32", None, None, None, *timed("torch eager fp32"), None])
    rows.append([f"{name}: same weights", "onnxruntime fp32", *scored(report["float_graph"]),
                 *timed("onnxruntime fp32"), _mib(sizes["model_fp32.onnx"])])
    rows.append([f"{name}: deployed", "onnxruntime int8", *scored(report["deployed"]), *timed("onnxruntime int8"),
                 _mib(sizes["model_int8.onnx"])])
    return rows


def _notes(report: dict) -> list[str]:
    latency, ops = report["latency"], report["operators"]
    int8, fp32 = latency["onnxruntime int8"]["p50_ms"], latency["onnxruntime fp32"]["p50_ms"]
    shares: dict[str, float] = {}
    for op, share in report["shares"].items():
        shares[kind(op)] = shares.get(kind(op), 0.0) + share
    islands = sorted({op for op in report["shares"] if kind(op) == "float"})
    integer = sum(n for op, n in ops.items() if kind(op) == "integer")
    floats = report["float_weight_nodes"]
    acts = report["activations"]
    timed = f" ({report['timed']}'s network, one of {len(report['networks'])})" if report["timed"] else ""
    notes = [f"{report['name']}{timed}: {report['cpu']}, {report['threads']} threads, batch 1, input "
             + ", ".join(f"{k} {'x'.join(map(str, v[0]))}" for k, v in report["input"].items())
             + f"; onnxruntime int8 / fp32 p50 = {int8 / fp32:.2f}",
             f"{report['name']}: {integer} integer kernels after onnxruntime's optimisation "
             f"({', '.join(f'{ops[o]} {o}' for o in ops if kind(o) == 'integer')}); weight operators left in float: "
             + (", ".join(floats) if floats else "none"),
             f"{report['name']}: int8 time by kernel kind: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in
                                                                        sorted(shares.items()))
             + f"; float islands: {', '.join(islands) if islands else 'none'}",
             f"{report['name']}: weights: {report['layer_codes']} layers on their QAT codes, "
             f"{len(report['post_training'])} at 8 bits max-abs; activations: {acts['learned']} on learned grids, "
             f"{acts['calibrated']} calibrated ({acts['calibration']})"]
    return notes + [f"{report['name']}: {n}" for n in report["notes"]]


def deploy_table(folder: Path, task, cfg: dict) -> Table:
    """One block of rows per `deploy/<name>/report.json`, then the paper's rows."""
    evidence, metric = Evidence(folder, task, cfg), task.best_metric
    rows, notes = [], []
    for path in sorted((folder / "deploy").glob("*/report.json")):
        report = read_json(path)
        rows += _rows(folder, report, evidence, metric)
        notes += _notes(report)
    published = getattr(task, "published", {}).get("deploy")
    if published:
        for row in published["rows"]:
            rows.append([f"paper: {row['model']}", f"{row['runtime']} ({published['cpu']})", None, None, None,
                         row["latency_ms"], None, None, row["size_mb"]])
        notes.append(f"paper rows: as printed beside T-A4 on an {published['cpu']} (its sizes in MB)")
    return Table("deploy", f"Deployment: {metric}, latency and memory", HEADER, rows, notes)
