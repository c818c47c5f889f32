"""The one timing rule of the benchmarks: one warm-up call, then the median of `repeats`."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up: first-call allocations and caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
