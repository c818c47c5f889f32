"""The MQAT paper's tables from a finished `--mode mqat` experiment, ours beside the
published numbers: the module cube (T-A2), one module's bit-width ablation (T-A3),
accuracy vs compression of uniform QAT / HAWQ-V3 / MQAT (T-A4), and float vs MQAT by
metric bin (T-A1). Written as Markdown and CSV under `tables/` and printed.

Published numbers come from the topology (`Task.published`, same metric as ours); a
missing experiment file or published entry leaves its cells empty ("-"), never invented.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlab.files import write_text_atomic
from quantlab.mqat.search import FLOAT

NAMES = ("cube", "module_bits", "compression", "depth")


@dataclass
class Table:
    name: str
    title: str
    header: list[str]
    rows: list[list[Any]]

    def markdown(self) -> str:
        cells = [[_cell(v) for v in row] for row in self.rows]
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "---|" * len(self.header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows([["" if v is None else v for v in row] for row in self.rows])
        return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _read(folder: Path, name: str) -> dict:
    path = folder / "mqat" / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _bits_label(bits: dict[str, int], modules: list[str]) -> str:
    return "-".join("FP" if bits[m] == FLOAT else str(bits[m]) for m in modules)


def cube(folder: Path, modules: list[str], metric: str, published: dict) -> Table:
    sens = _read(folder, "sensitivity.json")
    paper = {tuple(row[m] for m in modules): row["metric"] for row in published.get("cube", [])}
    paper_float = paper.get(tuple(FLOAT for _ in modules))
    rows = []
    ours = [{"bits": {m: FLOAT for m in modules}, "metric": sens.get("float_metric")}] + sens.get("cube", [])
    for row in ours:
        key = tuple(row["bits"][m] for m in modules)
        mine, theirs = row["metric"], paper.get(key)
        rows.append([*key, mine, None if mine is None or sens.get("float_metric") is None
                     else mine - sens["float_metric"], theirs,
                     None if theirs is None or paper_float is None else theirs - paper_float])
    return Table("cube", f"Module cube at {_probe_bits(sens)} bits ({FLOAT} = float), {metric}",
                 [*modules, "ours", "ours change", "paper", "paper change"], rows)


def _probe_bits(sens: dict) -> str:
    for row in sens.get("cube", []):
        low = [b for b in row["bits"].values() if b != FLOAT]
        if low:
            return str(low[0])
    return "probe"


def module_bits(folder: Path, modules: list[str], metric: str, published: dict) -> Table:
    base = _read(folder, "baselines.json")
    ablation = base.get("ablation", {})
    module = ablation.get("module") or published.get("module_bits", {}).get("module", "module")
    paper = {int(k): v for k, v in published.get("module_bits", {}).get("rows", {}).items()}
    rows = [["FP", 1.0, _read(folder, "sensitivity.json").get("float_metric"), paper.get(FLOAT)],
            ["FP fine-tuned", 1.0, base.get("float_finetune"), None]]
    for row in ablation.get("rows", []):
        rows.append([row["bits"], row["compression"], row["metric"], paper.get(row["bits"])])
    return Table("module_bits", f"{module} alone at each bit-width, other modules float, {metric}",
                 [f"{module} bits", "compression", "ours", "paper"], rows)


def compression(folder: Path, modules: list[str], metric: str, published: dict) -> Table:
    base, result = _read(folder, "baselines.json"), _read(folder, "result.json")
    ours: list[tuple[str, str, float | None, float | None]] = [
        ("float", "FP", 1.0, _read(folder, "sensitivity.json").get("float_metric")),
        ("float fine-tuned", "FP", 1.0, base.get("float_finetune"))]
    for row in base.get("uniform", []):
        ours.append((f"{row['algorithm'].upper()} uniform", str(row["bits"]), row["compression"], row["metric"]))
    if base.get("hawq"):
        ours.append(("HAWQ-V3", "per layer", base["hawq"]["compression"], base["hawq"].get("metric")))
    if result:
        ours.append(("MQAT", _bits_label(result["bits"], modules) + " (" + " > ".join(result["order"]) + ")",
                     result["compression"], result["metric"]))
    rows = []
    for method, bits, ratio, value in ours:
        points = [p for p in published.get("compression", []) if p["method"] == method]
        near = min(points, key=lambda p: abs(p["compression"] - ratio)) if points else None
        rows.append([method, bits, ratio, value, near and near["compression"], near and near["metric"]])
    return Table("compression", f"Accuracy vs compression, {metric} (paper: its point nearest our compression)",
                 ["method", f"bits ({'-'.join(modules)})", "compression", "ours", "paper compression", "paper"],
                 rows)


def depth(folder: Path, modules: list[str], metric: str, published: dict) -> Table:
    prefix = metric.rsplit("/", 1)[0] + "/"
    result = _read(folder, "result.json")
    paper = published.get("depth", {})
    bins = list(next(iter(paper.values()), {})) or sorted(
        k[len(prefix):] for k in result.get("float_metrics", {}) if k.startswith(prefix))
    rows = []
    for label, key, measured in (("float", "float", result.get("float_metrics", {})),
                                 ("MQAT " + _bits_label(result["bits"], modules) if result else "MQAT", "mqat",
                                  result.get("metrics", {}))):
        rows.append([label, "ours", *[measured.get(prefix + b) for b in bins]])
        rows.append([label, "paper", *[paper.get(key, {}).get(b) for b in bins]])
    return Table("depth", f"{prefix.rstrip('/')} by bin, float vs MQAT", ["model", "source", *bins], rows)


BUILDERS = {"cube": cube, "module_bits": module_bits, "compression": compression, "depth": depth}


def write_tables(folder: Path, names: list[str], modules: list[str], metric: str, published: dict,
                 writer: bool = True) -> str:
    """Build the named tables from experiment `folder`; write tables/<name>.{md,csv}
    (main rank) and return the Markdown of all of them."""
    return save_tables(folder, [BUILDERS[name](folder, modules, metric, published) for name in names], writer)


def save_tables(folder: Path, tables: list[Table], writer: bool = True) -> str:
    """Write tables/<name>.{md,csv} (main rank) and return their Markdown."""
    if writer:
        out = folder / "tables"
        for table in tables:
            write_text_atomic(out / f"{table.name}.md", table.markdown() + "\n")
            write_text_atomic(out / f"{table.name}.csv", table.csv())
    return "\n\n".join(t.markdown() for t in tables)
