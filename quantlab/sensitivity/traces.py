"""Per-layer trace estimates with their standard errors, pooled over ranks, and how a bit
allocation takes the ones whose sign is against its assumption.

HAWQ-V2/V3 and the output-sensitivity PTQ paper (C) weigh a layer's quantization error by
its mean Hessian trace, assuming it is positive (the loss near a minimum curves upwards).
A Hutchinson estimate can be negative: by noise, when the true trace is small, or because
the model is not at a minimum of the loss traced (DETR's matched loss, the distillation
loss at 8-bit weights). Taken literally, a negative trace makes more quantization error
look better, so the ILP sends the layer to the lowest bits and spends what it saved
elsewhere. `negative_traces` says what the allocation uses instead:

  abs    |trace|: the curvature's size, whatever its sign (the default, measured on the
         DETR mini PTQ table, problems/COCO/README.md: the layer's loss moves that much either way)
  clamp  max(trace, 0): a layer of negative curvature counts as insensitive
  raw    the trace as estimated (the published formula)

Every estimate is reported with its standard error, so a reader sees which traces are
not significant (|trace| below 1.96 standard errors); raising the number of Hutchinson
vectors or images shrinks them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: a trace whose |value| is below Z standard errors is not significant (two-sided 95%)
Z = 1.96


@dataclass(frozen=True)
class Trace:
    """One layer's mean trace over its samples (a batch's mean over its Hutchinson
    vectors, or one image's squared gradient norm), its standard error, and the count."""
    value: float
    se: float
    samples: int

    @property
    def significant(self) -> bool:
        return self.samples > 1 and abs(self.value) > Z * self.se

    def record(self) -> dict[str, float]:
        return {"trace": self.value, "se": self.se, "samples": self.samples}

    @classmethod
    def from_record(cls, record: dict | float) -> "Trace":
        """A recorded trace; a bare number (recorded before standard errors were kept)
        has an unknown error."""
        if isinstance(record, dict):
            return cls(float(record["trace"]), float(record["se"]), int(record["samples"]))
        return cls(float(record), math.nan, 0)


def moments(samples: dict[str, np.ndarray]) -> dict[str, float]:
    """This rank's count, sum and sum of squares of each layer's samples, as flat keys for
    an all-reduce."""
    out: dict[str, float] = {}
    for layer, values in samples.items():
        values = np.asarray(values, np.float64)
        out.update({f"{layer}|n": float(values.size), f"{layer}|sum": float(values.sum()),
                    f"{layer}|squares": float((values ** 2).sum())})
    return out


def pooled(averaged: dict[str, float], ranks: int) -> dict[str, Trace]:
    """The traces from every rank's `moments`, averaged over `ranks` ranks by an
    all-reduce (the ratios of averaged sums are those of the pooled sums)."""
    traces = {}
    for layer in sorted({key.rsplit("|", 1)[0] for key in averaged}):
        n, total, squares = (averaged[f"{layer}|{k}"] for k in ("n", "sum", "squares"))
        mean, count = total / n, int(round(n * ranks))
        variance = max(squares / n - mean ** 2, 0.0) * count / (count - 1) if count > 1 else math.nan
        traces[layer] = Trace(mean, math.sqrt(variance / count), count)
    return traces


def used(traces: dict[str, Trace], rule: str) -> dict[str, float]:
    """The traces an allocation weighs the quantization errors with, by `rule`."""
    if rule == "abs":
        return {k: abs(t.value) for k, t in traces.items()}
    if rule == "clamp":
        return {k: max(t.value, 0.0) for k, t in traces.items()}
    return {k: t.value for k, t in traces.items()}


def summary(traces: dict[str, Trace], rule: str, key: str) -> str | None:
    """One line for the log and the tables when some traces are negative or not
    significant (None when every trace is significantly positive)."""
    negative = sum(t.value < 0 for t in traces.values())
    unsure = sum(not t.significant for t in traces.values())
    if not negative and not unsure:
        return None
    taken = {"abs": "uses |trace|", "clamp": "uses max(trace, 0)", "raw": "uses them as estimated"}[rule]
    return (f"{negative} of {len(traces)} traces negative, {unsure} not significant (|trace| < {Z} standard "
            f"errors); {key}: {rule} {taken}")
