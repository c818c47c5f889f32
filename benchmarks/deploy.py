"""Deployed models at the papers' input sizes: onnxruntime int8 against the fp32 runtimes,
measured side by side in one run, with each session's peak memory and the file sizes.

    .venv/bin/python benchmarks/deploy.py [--topologies Widedepth ZebraPose DETR] [--threads 2]
                                          [--rounds 5] [--runs 3] [--out benchmarks/results]

Each topology's network is built at its `paper` size with random weights (latency does not
depend on their values), quantized with symmetric per-channel weights (Widedepth at MQAT's
8-2-8 bits for backbone, FPN and head, the others at 8 bits, the config's exclusions
float), deployed as `--mode deploy` does (quantlab.deploy.pipeline, activation ranges by
min-max over the example input) and timed at batch 1: torch eager fp32, onnxruntime fp32
and onnxruntime int8 take turns in every round (`--runs` calls each); the ratio is int8
over the faster fp32 runtime in that round, its median and range over the rounds. p50 and
p90 are over every timed call. file_MiB: the ONNX files, and beside torch the packed
integer file (`model_int.pt`, weights at their own bits). float_share: the int8 model's
kernel time in float operators (the float islands), from onnxruntime's profile. Inputs: Widedepth 512 x 512 (paper A), ZebraPose a 256 x 256
crop (paper A), DETR-R50 800 x 800 (DETR's evaluation size; our synthetic images are
square). The file is benchmarks/results/deploy-<machine>-<date>.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from qat_step import configure, exclusions  # noqa: E402  (benchmarks/, the script's folder)
from tables import markdown  # noqa: E402

from quantlab.deploy.measure import RUNTIMES, calls, cpu_name  # noqa: E402
from quantlab.deploy.memory import measure as peak_memory  # noqa: E402
from quantlab.deploy.pipeline import FP32, INT8, deploy  # noqa: E402
from quantlab.deploy.kernels import kind  # noqa: E402
from quantlab.deploy.runtime import time_shares  # noqa: E402
from quantlab.quant.editing import Rule, apply_recipe  # noqa: E402
from quantlab.quant.export import export_integer  # noqa: E402

#: --set overrides on each topology's paper profile (qat_step's, DETR at its evaluation size)
INPUTS = {"Widedepth": [], "ZebraPose": [],
          "DETR": ["input.val_size=800", "input.max_size=1333", "data.synthetic.params.image_size=800"]}
#: bits of each quantized group (the others: 8)
BITS = {"Widedepth": {"backbone": 8, "fpn": 2, "head": 8}}


def quantized_network(topology: str, root: Path) -> tuple[torch.nn.Module, list[dict], dict]:
    """The paper-size network with random weights, quantized, its recipe report and its
    example input."""
    cfg, build_task = configure(topology, "paper", INPUTS[topology])
    task = build_task(cfg, root)
    task.prepare_data()
    torch.manual_seed(0)
    model = task.build_network().eval()
    skip = exclusions(task, cfg)
    rules = [Rule(g, "symmetric", BITS.get(topology, {}).get(g, 8), per_channel=True)
             for g in task.groups if g not in skip]
    recipe = apply_recipe(model, rules, task.patterns, skip)
    return model, recipe, task.export_inputs(task.example_batch())


def measure(topology: str, threads: int, rounds: int, runs: int) -> list[dict]:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model, recipe, inputs = quantized_network(topology, root / "data")
        start = time.perf_counter()
        deployment = deploy(model, inputs, [{n: x.numpy() for n, x in inputs.items()}], "minmax")
        sizes = deployment.write(root)
        sizes["model_int.pt"] = export_integer(model, root / "model_int.pt", recipe)
        build_s = time.perf_counter() - start
        timed = calls(deployment, root, threads)
        for call in timed.values():
            call()
        samples: dict[str, list[float]] = {label: [] for label in RUNTIMES}
        ratios = []
        for _ in range(rounds):
            medians = {}
            for label, call in timed.items():
                times = []
                for _ in range(runs):
                    begin = time.perf_counter()
                    call()
                    times.append(1000 * (time.perf_counter() - begin))
                samples[label] += times
                medians[label] = statistics.median(times)
            ratios.append(medians[RUNTIMES[2]] / min(medians[RUNTIMES[0]], medians[RUNTIMES[1]]))
        feeds = {n: x[:1].numpy() for n, x in inputs.items()}
        shapes = {n: (list(a.shape), str(a.dtype)) for n, a in feeds.items()}
        memory = {FP32: peak_memory(root / FP32, threads, shapes), INT8: peak_memory(root / INT8, threads, shapes)}
        shares = time_shares(root / INT8, feeds, threads, 2)
    float_share = sum(v for op, v in shares.items() if kind(op) == "float")
    islands = ", ".join(f"{op} {100 * v:.0f}%" for op, v in shares.items() if kind(op) == "float" and v >= 0.01)
    integer = sum(n for op, n in deployment.operators.items() if kind(op) == "integer")
    image = "x".join(map(str, next(iter(inputs.values())).shape[-2:]))
    rows = []
    for label, name in zip(RUNTIMES, (None, FP32, INT8)):
        row = {"topology": topology, "input": image, "runtime": label, "p50_ms": float(np.percentile(samples[label], 50)),
               "p90_ms": float(np.percentile(samples[label], 90)), "session_MiB": memory[name]["session_mib"] if name else None,
               "file_MiB": sizes[name or "model_int.pt"] / 2 ** 20}
        if name == INT8:
            row.update({"int8_over_best_fp32": statistics.median(ratios),
                        "ratio_range": f"{min(ratios):.2f}-{max(ratios):.2f}", "integer_kernels": integer,
                        "float_weight_ops": len(deployment.float_weight_nodes),
                        "float_share": f"{100 * float_share:.0f}%", "float_islands": islands or "-",
                        "build_s": build_s})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    rows = []
    for topology in args.topologies:
        try:
            rows += measure(topology, args.threads, args.rounds, args.runs)
        except Exception as exc:  # one failed topology must not lose the others' figures
            traceback.print_exc()
            rows.append({"topology": topology, "runtime": f"failed: {type(exc).__name__}: {exc}".splitlines()[0]})
        print(markdown(rows), flush=True)
    today = datetime.date.today().isoformat()
    machine = cpu_name().split()[0].lower() + "-" + "-".join(cpu_name().split()[1:2]).lower()
    path = args.out / f"deploy-{machine}-{today}.md"
    header = [f"# Deployment benchmark, {today}", "", f"- CPU: {cpu_name()}, {args.threads} threads, batch 1",
              f"- onnxruntime {importlib.metadata.version('onnxruntime')}, torch {torch.__version__}",
              f"- command: `.venv/bin/python benchmarks/deploy.py {' '.join(sys.argv[1:])}`".replace(" `", " `", 1),
              f"- {args.rounds} rounds x {args.runs} calls per runtime; ratio = int8 / faster fp32 in each round", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + markdown(rows) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
