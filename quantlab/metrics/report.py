"""The size and compute report of a quantized model: what `quant_report.json` holds and
the three lines a run prints."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from quantlab.metrics.cost import cost_report
from quantlab.metrics.size import size_report


def quant_report(model: nn.Module, layers: list[dict], run: Callable[[nn.Module], Any]) -> dict:
    """The quantized layers (editing report rows), weight size and compression, and MACs /
    BOPs of `run(model)` (one forward of an example batch)."""
    return {"layers": layers, "size": size_report(model), "cost": cost_report(model, run)}


def summary(report: dict) -> str:
    rows, size, cost = report["layers"], report["size"], report["cost"]
    algos = sorted({(r["algorithm"], r["bits"]) for r in rows})
    kinds = ", ".join(f"{sum(1 for r in rows if (r['algorithm'], r['bits']) == a)} x {a[0]} {a[1]}-bit" for a in algos)
    return (f"quantized {len(rows)} layers ({kinds})\n"
            f"  weights {size['bytes'] / 2**20:.3f} MiB vs {size['float_bytes'] / 2**20:.3f} MiB float32: "
            f"compression {size['compression']:.2f}x\n"
            f"  compute {cost['macs'] / 1e9:.3f} GMACs: {cost['bops'] / 1e9:.1f} GBOPs vs "
            f"{cost['float_bops'] / 1e9:.1f} float (32 x 32 bits): {cost['bops_reduction']:.2f}x fewer")
