"""The compression table drawn as the MQAT paper draws its compression figure (T-A4): accuracy against compression, one
line per method, ours with their bootstrap intervals beside the paper's points.

It is drawn from the table itself (the cells the reader sees), so the figure and the table
never disagree; the paper's points are every published point of each method, not only the
one the table pairs with ours.
"""
from __future__ import annotations

from pathlib import Path

from quantlab.metrics.intervals import Estimate
from quantlab.metrics.plots import pyplot
from quantlab.records import Table

#: the methods drawn as lines, in legend order (float is the horizontal reference)
METHODS = ("MQAT", "HAWQ-V3", "LSQ uniform", "INQ uniform", "float fine-tuned")


def compression_figure(table: Table, task, path: Path) -> None:
    """`path` (PNG): the figure `draw` makes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw(ax, table, task.published, task.best_metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw(ax, table: Table, published: dict, metric: str) -> None:
    """Each method's points of `table` (compression, value, interval) joined by a line, the
    paper's points of the same method dashed with hollow markers, and the float model as a
    horizontal line with its interval as a band."""
    column = {name: i for i, name in enumerate(table.header)}
    ours: dict[str, list[tuple[float, float, tuple[float, float] | None]]] = {}
    for row in table.rows:
        value = row[column["ours"]]
        if value is None or row[column["compression"]] is None:
            continue
        number = value.value if isinstance(value, Estimate) else float(value)
        bounds = value.bounds if isinstance(value, Estimate) else None
        ours.setdefault(row[column["method"]], []).append((_mean(row[column["compression"]]), number, bounds))
    paper: dict[str, list[tuple[float, float]]] = {}
    for point in published.get("compression", []):
        paper.setdefault(point["method"], []).append((point["compression"], point["metric"]))
    colours = pyplot().get_cmap("tab10")
    for i, method in enumerate(METHODS):
        colour = colours(i)
        points = sorted(ours.get(method, []))
        if points:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            low = [y - (p[2][0] if p[2] else y) for y, p in zip(ys, points)]
            high = [(p[2][1] if p[2] else y) - y for y, p in zip(ys, points)]
            ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, color=colour, label=f"{method} (ours)")
        published = sorted(paper.get(method, []))
        if published:
            ax.plot(*zip(*published), linestyle="--", marker="s", markerfacecolor="none", color=colour,
                    label=f"{method} (paper)")
    for source, style in (("ours", "-"), ("paper", ":")):
        points = ours.get("float", []) if source == "ours" else [(c, m, None) for c, m in paper.get("float", [])]
        if points:
            _, value, bounds = points[0]
            ax.axhline(value, color="black", linestyle=style, linewidth=1, label=f"float ({source})")
            if bounds:
                ax.axhspan(*bounds, color="black", alpha=0.08)
    ax.set(xlabel="compression (float32 size / quantized size)", ylabel=metric,
           title=f"{metric} against compression: ours with 95% intervals, the paper's points hollow")
    ax.title.set_fontsize(9)
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize=7, ncol=2)


def _mean(cell: float | str) -> float:
    """A number of the table, or the mean of the seeds' numbers a table over seeds joins
    with ' / ' where they differ (the compression each seed's bit search reached)."""
    return float(cell) if not isinstance(cell, str) else sum(map(float, cell.split(" / "))) / len(cell.split(" / "))
