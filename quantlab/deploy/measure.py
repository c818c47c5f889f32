"""What a deployed model costs to run: latency of torch eager fp32, onnxruntime fp32 and
onnxruntime int8 at batch 1 with fixed threads, the peak memory of each session, and the
int8 model's kernel time by operator."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from quantlab.deploy import runtime
from quantlab.deploy.memory import measure as peak_memory
from quantlab.deploy.pipeline import FP32, INT8, Deployment

RUNTIMES = ("torch eager fp32", "onnxruntime fp32", "onnxruntime int8")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calls(deployment: Deployment, folder: Path, threads: int) -> dict[str, callable]:
    """One batch-1 inference per runtime, ready to time."""
    example = tuple(x[:1] for x in deployment.example)
    feeds = {n: x.numpy() for n, x in zip(deployment.names, example)}
    sessions = {FP32: runtime.session(folder / FP32, threads), INT8: runtime.session(folder / INT8, threads)}

    def eager() -> None:
        with torch.no_grad():
            deployment.plain(*example)
    return {RUNTIMES[0]: eager, RUNTIMES[1]: lambda: sessions[FP32].run(None, feeds),
            RUNTIMES[2]: lambda: sessions[INT8].run(None, feeds)}


def timings(deployment: Deployment, folder: Path, threads: int, warmup: int, runs: int,
            profile_runs: int) -> dict:
    """Latency of each runtime (torch at `threads` threads), each session's peak memory,
    and the int8 kernel time shares."""
    kept = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        found = {label: runtime.latency(call, warmup, runs)
                 for label, call in calls(deployment, folder, threads).items()}
    finally:
        torch.set_num_threads(kept)
    feeds = {n: x[:1].numpy() for n, x in zip(deployment.names, deployment.example)}
    shapes = {n: (list(a.shape), str(a.dtype)) for n, a in feeds.items()}
    for label, name in ((RUNTIMES[1], FP32), (RUNTIMES[2], INT8)):
        found[label].update(peak_memory(folder / name, threads, shapes))
    shares = runtime.time_shares(folder / INT8, feeds, threads, profile_runs)
    return {"latency": found, "shares": shares, "threads": threads, "input": shapes, "cpu": cpu_name()}
