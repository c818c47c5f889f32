"""Peak resident memory of one onnxruntime session, measured in a fresh process.

`python -m quantlab.deploy.memory MODEL THREADS NAME=SHAPE[:DTYPE] ...` loads the model,
runs it three times on zeros and prints, as JSON, the process's resident set just before
the session was created (Python, numpy, onnxruntime loaded) and its peak at the end; their
difference is what the session itself costs at its peak. A separate process, because
the peak only grows.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(model: Path, threads: int, shapes: dict[str, tuple[list[int], str]]) -> dict[str, float]:
    """{'baseline_mib', 'peak_mib', 'session_mib'} of `model` in a fresh interpreter (Linux)."""
    args = [f"{name}={'x'.join(map(str, shape))}:{dtype}" for name, (shape, dtype) in shapes.items()]
    done = subprocess.run([sys.executable, "-m", "quantlab.deploy.memory", str(model), str(threads), *args],
                          capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise RuntimeError(f"{model}: memory probe failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> None:
    from quantlab.deploy.runtime import session  # onnxruntime loaded: part of the baseline
    model, threads, specs = argv[0], int(argv[1]), argv[2:]
    feeds = {}
    for spec in specs:
        name, rest = spec.split("=", 1)
        shape, dtype = rest.split(":")
        feeds[name] = np.zeros([int(s) for s in shape.split("x")], dtype=dtype)
    baseline = _status_mib("VmRSS")
    run = session(model, threads)
    for _ in range(3):
        run.run(None, feeds)
    peak = _status_mib("VmHWM")
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak, "session_mib": peak - baseline}))


if __name__ == "__main__":
    _main(sys.argv[1:])
