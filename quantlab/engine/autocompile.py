"""`engine.compile: auto`: compile the model only where the run is long enough to pay.

Whole-model `torch.compile` saves a few percent a step once the quantizers are fused
(benchmarks/README.md), and costs one compile of one to two minutes on a CPU node. auto
times the first eager steps of the run, and compiles when the compile time the config
gives (`engine.compile_seconds`, what the log's "the first step, which compiles the
model, took" line measured) is at most `SHARE` of the time the run has left.
"""
from __future__ import annotations

import statistics

#: the most of the run's remaining time a compile may take
SHARE = 0.05
#: eager steps timed before the choice; the run's first step (allocations) is not one
PROBE_STEPS = 4


def choose(compile_seconds: float, step_seconds: float, steps_left: int) -> tuple[bool, str]:
    """Whether to compile, and the log line that says why."""
    left = step_seconds * steps_left
    share = compile_seconds / left if left > 0 else float("inf")
    verdict = "compiling the model" if share <= SHARE else "staying eager"
    return share <= SHARE, (f"engine.compile auto: {verdict}: a compile of ~{compile_seconds:.0f} s "
                            f"(engine.compile_seconds) is {100 * share:.3g}% of the ~{left:.0f} s left "
                            f"({steps_left} steps of {step_seconds * 1000:.0f} ms; the limit is {100 * SHARE:.0f}%)")


class StepClock:
    """The durations of a run's first steps, for `choose`: the median of PROBE_STEPS after
    the first."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def ready(self) -> bool:
        return len(self.seconds) > PROBE_STEPS

    def step_seconds(self) -> float:
        return statistics.median(self.seconds[1:])
