"""SwissCube evaluation: match detections to ground truth, ADD/ADI/REP by depth bin, plot."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from problems.SwissCube.dataset import SwissCube
from quantlab.metrics.bootstrap import Scored
from quantlab.metrics.plots import pyplot
from quantlab.metrics.pose import BIN_NAMES, PoseRecord, add_error, adi_error, rep_error, summarize


def pose_records(predictions: list[dict], ground_truth: list[dict], data: SwissCube) -> list[PoseRecord]:
    """One record per ground-truth instance; the best-scoring detection of its object is
    its estimate, and an instance without one is a miss (errors +inf)."""
    records = []
    for pred, gt in zip(predictions, ground_truth):
        for inst in gt["instances"]:
            mine = [d for d in pred["detections"] if d["obj_id"] == inst["obj_id"]]
            points = data.meshes[inst["obj_id"]].points
            if not mine:
                records.append(PoseRecord(float(inst["t"][2]), np.inf, np.inf, np.inf, pred["index"]))
                continue
            best = max(mine, key=lambda d: d["score"])
            args = (inst["R"], inst["t"], np.asarray(best["R"]), np.asarray(best["t"]))
            records.append(PoseRecord(float(inst["t"][2]), add_error(points, *args), adi_error(points, *args),
                                      rep_error(points, gt["K"], *args), pred["index"]))
    return records


def evaluate(predictions: list[dict], ground_truth: list[dict], data: SwissCube,
             diameter: float) -> Scored:
    if [p["index"] for p in predictions] != [g["index"] for g in ground_truth]:
        raise ValueError("predictions do not cover the split exactly once")
    return summarize(pose_records(predictions, ground_truth, data), diameter, [p["index"] for p in predictions])


def table(metrics: dict[str, float]) -> str:
    """ADI and ADD at each k x diameter, REP at each threshold, per depth bin."""
    groups = ("all",) + BIN_NAMES
    rows = [k.split("/")[0] for k in metrics if k.endswith("/all") and k.split("-")[0] in ("ADI", "ADD", "REP")]
    width = max(len(r) for r in rows)
    lines = [f"{'metric':<{width}} " + " ".join(f"{g:>7}" for g in groups),
             f"{'images':<{width}} " + " ".join(f"{metrics['count/' + g]:>7d}" for g in groups)]
    for row in rows:
        lines.append(f"{row:<{width}} " + " ".join(f"{metrics[f'{row}/{g}']:>7.1f}" for g in groups))
    lines.append(f"missed detections: {metrics['missed']}; depth bins (mm): " + ", ".join(
        f"{g} {metrics['depth_min/' + g]:.0f}-{metrics['depth_max/' + g]:.0f}" for g in BIN_NAMES))
    return "\n".join(lines)


def curves(metrics: dict[str, float]) -> list[str]:
    """The metrics drawn by depth (ADI at each k x diameter, REP at each pixel threshold),
    in legend order: by family, then by threshold as a number (REP-2px before REP-10px;
    sorting the names as text would not)."""
    def order(key: str) -> tuple[str, float]:
        family, _, threshold = key.partition("-")
        return family, float(re.match(r"[0-9.]+", threshold).group(0))
    drawn = {k.split("/")[0] for k in metrics if k.endswith("/near") and k.startswith(("ADI-", "REP-"))}
    return sorted(drawn, key=order)


def plot_by_depth(metrics: dict[str, float], path: Path) -> None:
    """Accuracy per depth bin (ADI at each k x diameter, REP at each pixel threshold)."""
    centres = [(metrics[f"depth_min/{g}"] + metrics[f"depth_max/{g}"]) / 2 for g in BIN_NAMES]
    plt = pyplot()
    fig, (ax_2d, ax_3d) = plt.subplots(1, 2, figsize=(9, 4))
    for key in curves(metrics):
        ax = ax_3d if key.startswith("ADI") else ax_2d
        ax.plot(centres, [metrics[f"{key}/{g}"] for g in BIN_NAMES], marker="o", label=key)
    for ax, title in ((ax_2d, "2D reprojection"), (ax_3d, "ADI")):
        ax.set(title=title, xlabel="depth (mm)", ylabel="success rate (%)", ylim=(-2, 102))
        ax.grid(True)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
