"""End-to-end engine behaviour through main.py: Horovod ranks, checkpoints, resume, errors.

Runs are tiny (64 px images, 16 training images) but real: horovodrun, gloo/MPI, files.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, in_process

PY = sys.executable
HOROVODRUN = str(Path(PY).with_name("horovodrun"))
TORCHRUN = str(Path(PY).with_name("torchrun"))
EXP = REPO / "problems"
TINY_SET = [
    "data.root=SwissCube-tiny",
    "data.synthetic.params.image_size=64",
    "data.synthetic.params.images={train: 16, validation: 4, test: 12}",
    "data.synthetic.params.images_per_sequence=8",
    "data.synthetic.params.depth_range=[150.0, 600.0]",
    "data.synthetic.params.margin=0.2",
    "data.synthetic.params.max_rotation=180.0",
    "data.synthetic.params.seed=5",
    "input.size=64",
    "training.batch_size=4",
    "training.epochs=2",
    "engine.threads=1",
    "engine.save_every=1",
]


def main_cmd(*args: str, sets: list[str] = ()) -> list[str]:
    cmd = [str(REPO / "main.py"), "--problem", "SwissCube", "--topology", "Widedepth", *args]
    for s in [*TINY_SET, *sets]:
        cmd += ["--set", s]
    return cmd


def run(cmd: list[str], storage: Path, ranks: int = 1, timeout: int = 240,
        launcher: str = "horovodrun") -> subprocess.CompletedProcess:
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1")
    full = [PY, *cmd] if ranks == 1 else (
        [HOROVODRUN, "-np", str(ranks), "-H", f"localhost:{ranks}", PY, *cmd] if launcher == "horovodrun"
        else [TORCHRUN, "--standalone", "--nproc_per_node", str(ranks), *cmd])
    return subprocess.run(full, env=env, capture_output=True, text=True, timeout=timeout, cwd=storage)


def run_here(cmd: list[str], storage: Path) -> subprocess.CompletedProcess:
    """`cmd` (a main.py command line) run in this process (conftest.in_process), for a run
    that ends at its start-up checks."""
    import main as entry
    return in_process(entry.main, cmd[1:], {"QUANTLAB_STORAGE": str(storage / "hard_storage.json")}, storage)


def exp_dir(storage: Path, n: int = 0) -> Path:
    return storage / "logs" / "SwissCube" / "Widedepth" / f"exp{n:04d}"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_horovodrun_two_ranks_agree_and_test_mode_reproduces_metrics(storage):
    out = run(main_cmd("--mode", "train", sets=["engine.progress_interval=0.001"]), storage, ranks=2)
    assert out.returncode == 0, out.stdout + out.stderr
    # no terminal: progress is whole lines from rank 0 (here at every batch), no redrawn bar
    text = out.stdout + out.stderr
    assert "\r" not in text and "it/s]" not in text
    progress = [line for line in text.splitlines() if "(100%)" in line]
    assert progress and all(line.startswith("[1,0]<stderr>:") for line in progress)
    assert any("epoch 2/2: 2/2 (100%)" in line for line in progress)
    exp = exp_dir(storage)
    last = load(exp / "saves" / "last.pt")
    # ranks start from different random initialisations (seed + rank): equal digests mean
    # the broadcast, the gradient averaging and the buffer averaging all worked
    assert len(last["rank_digests"]) == 2 and len(set(last["rank_digests"])) == 1
    assert last["epoch"] == 2 and (exp / "saves" / "epoch_0002.pt").is_file()
    assert (exp / "config.yaml").is_file() and list((exp / "stats").glob("events.out.tfevents.*"))
    assert (exp / "eval" / "epoch_0002" / "accuracy_by_depth.png").is_file()
    # best.pt is chosen on the validation split (engine.select_split), evaluated beside the
    # test split each epoch: the first epoch of the highest validation score
    chosen = {e: json.loads((exp / "eval" / f"epoch_{e:04d}_validation" / "metrics.json").read_text())
              for e in (1, 2) if (exp / "eval" / f"epoch_{e:04d}").is_dir()}
    assert 2 in chosen and all(m["count/all"] == 4 for m in chosen.values())  # the 4 validation images
    scores = {e: m["ADI-0.1d/all"] for e, m in chosen.items()}
    best = load(exp / "saves" / "best.pt")
    assert best["best_epoch"] == min(e for e in scores if scores[e] == max(scores.values()))
    assert best["best"] == max(scores.values())
    assert f"best.pt: epoch {best['best_epoch']}, chosen by ADI-0.1d/all {best['best']:.2f} on the validation " \
           "split (engine.select_split); reported above: the test split" in text
    recorded = json.loads((exp / "eval" / f"epoch_{best['best_epoch']:04d}" / "metrics.json").read_text())
    assert recorded["count/all"] == 12  # every test image exactly once across the two ranks
    # one process re-evaluates `best`: the metrics the 2-rank run gathered must be reproduced
    test = run(main_cmd("--mode", "test", "--exp_id", "0", "--ckpt", "best"), storage)
    assert test.returncode == 0, test.stdout + test.stderr
    again = json.loads((exp / "eval" / "test_best" / "metrics.json").read_text())
    assert again == recorded
    assert "ADI-0.1d" in test.stdout


def _train_until_killed(storage: Path, epochs: int) -> None:
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"))
    proc = subprocess.Popen([PY, *main_cmd("--mode", "train", sets=[f"training.epochs={epochs}"])],
                            env=env, cwd=storage, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = exp_dir(storage) / "saves" / "epoch_0001.pt"
    deadline = time.time() + 180
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_and_resume_equals_uninterrupted(storage, tmp_path_factory):
    epochs = 3
    reference = tmp_path_factory.mktemp("reference")
    shutil.copytree(storage, reference, dirs_exist_ok=True)
    out = run(main_cmd("--mode", "train", sets=[f"training.epochs={epochs}"]), reference)
    assert out.returncode == 0, out.stderr
    # engine.compile auto chose after 5 of the 12 steps: 7 steps of a few ms are far below
    # 20 times a compile, and the checkpoints keep the choice for a resumed run
    assert re.search(r"engine.compile auto: staying eager: .* of the ~\d+ s left \(7 steps of", out.stdout)
    assert load(exp_dir(reference) / "saves" / "last.pt")["compiled"] is False
    _train_until_killed(storage, epochs)
    saves = exp_dir(storage) / "saves"
    killed_at = load(saves / "last.pt")["epoch"]
    assert killed_at < epochs, "the run finished before it could be killed"
    assert not [p for p in saves.iterdir() if ".tmp" in p.name], "a partial checkpoint was left"
    resumed = run(main_cmd("--mode", "train", "--exp_id", "0", sets=[f"training.epochs={epochs}"]), storage)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load(exp_dir(reference) / "saves" / "last.pt"), load(saves / "last.pt")
    assert a["epoch"] == b["epoch"] == epochs
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["metrics"] == b["metrics"]


def test_one_failing_rank_stops_every_rank_names_the_file_once_and_leaves_no_folder(storage):
    # a missing mask is read by only one rank's shard; the other rank waits in a collective
    data = storage / "data" / "SwissCube-tiny"
    first = (data / "training.txt").read_text().split()[3]
    seq, _, name = first.split("/")
    victim = data / seq / "mask_visib" / f"{Path(name).stem}_000000.png"
    victim.unlink()
    out = run(main_cmd("--mode", "train"), storage, ranks=2, timeout=180)
    text = out.stdout + out.stderr
    errors = [line for line in text.splitlines() if "error (rank" in line]
    assert out.returncode != 0 and len(errors) == 1 and "Traceback" not in text, text
    assert victim.name in errors[0] and "missing dataset file" in errors[0]
    # the healthy rank says in one line why it stopped; the experiment, which produced
    # nothing, is removed
    assert all(len(line) < 300 for line in text.splitlines() if "rank 0 stopped" in line)
    assert not list((storage / "logs").rglob("exp*"))


def test_nan_loss_names_epoch_batch_and_terms(storage):
    out = run(main_cmd("--mode", "train", sets=["training.lr=1e30", "training.optimizer=sgd"]), storage)
    assert out.returncode == 1
    line = out.stderr.strip().splitlines()[-1]
    assert "non-finite loss at epoch 1, batch" in line and "cls=" in line and "reg=" in line


def test_unknown_key_on_the_command_line_is_one_clear_line(storage):
    out = run_here(main_cmd("--mode", "train", sets=["training.epoch=3"]), storage)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0
    assert "unknown config key 'training.epoch'" in out.stderr
    assert not (storage / "logs").exists()


def test_qat_from_a_float_experiment_freezes_the_fpn_and_test_mode_evaluates_it(trained):
    storage = trained  # the float experiment 0, trained once per session
    qat = ["quantize.init=0",
           "quantize.rules=[{modules: fpn, algorithm: inq, bits: 2}, "
           "{modules: head, algorithm: lsq, bits: 4, act_algorithm: ste, act_bits: 8}]",
           "quantize.inq_schedule={0: 0.5, 1: 1.0}", "training.lr=0.0"]
    out = run(main_cmd("--mode", "train", sets=qat), storage, ranks=2)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "compression" in out.stdout
    exp = exp_dir(storage, 1)
    report = json.loads((exp / "quant_report.json").read_text())
    assert {r["layer"].split(".")[0] for r in report["layers"]} == {"fpn", "head"}
    assert report["size"]["compression"] > 1
    # head: 4-bit weights on 8-bit inputs, FPN: 2-bit weights on float inputs
    rows = {r["layer"]: r for r in report["cost"]["layers"]}
    assert rows["head.cls_logits"]["weight_bits"] == 4 and rows["head.cls_logits"]["act_bits"] == 8
    assert {r["weight_bits"] for k, r in rows.items() if k.startswith("fpn.")} == {2}
    assert rows["backbone.features.init_block.conv"]["bops"] == rows["backbone.features.init_block.conv"]["macs"] * 1024
    state = load(exp / "saves" / "last.pt")
    frozen = {k: v for k, v in state["model"].items() if k.endswith("wq.weight_frozen")}
    assert frozen and all(not torch.isnan(v).any() for v in frozen.values())  # fully frozen at epoch 2
    assert state["stateful"]["inq"] == {"fraction": 1.0}
    # activation ranges were calibrated on each rank's own batches, then combined: the
    # digest check before every checkpoint fails if the ranks fixed different ranges
    ranges = {k: v for k, v in state["model"].items() if k.endswith("aq.range")}
    assert ranges and all(float(v) > 0 for v in ranges.values())
    assert not any(bool(v) for k, v in state["model"].items() if k.endswith("aq.calibrating"))
    # lr 0: every float weight is still experiment 0's, on both ranks (init loaded on rank 0,
    # then broadcast); ranks start from different random weights, so this fails without it
    float_state = load(exp_dir(storage, 0) / "saves" / "best.pt")["model"]
    for key, value in float_state.items():
        if key.endswith(".weight") and value.dim() == 4:
            assert torch.equal(state["model"][key], value), key
    test = run(main_cmd("--mode", "test", "--exp_id", "1", "--ckpt", "last"), storage)
    assert test.returncode == 0, test.stderr
    metrics = json.loads((exp / "eval" / "test_last" / "metrics.json").read_text())
    # export to integer codes + ONNX, then test the integer file: the same metrics
    exported = run(main_cmd("--mode", "export", "--exp_id", "1", "--ckpt", "last"), storage)
    assert exported.returncode == 0, exported.stderr
    assert (exp / "export" / "model.onnx").is_file()
    int_file = exp / "export" / "model_int.pt"
    assert int_file.stat().st_size < (exp / "saves" / "last.pt").stat().st_size
    test = run(main_cmd("--mode", "test", "--exp_id", "1", "--ckpt", str(int_file)), storage)
    assert test.returncode == 0, test.stderr
    # a file outside saves/ is evaluated under its name and digest: never over test_last
    tags = [p.name for p in (exp / "eval").glob("test_model_int_*")]
    assert len(tags) == 1 and re.fullmatch(r"test_model_int_[0-9a-f]{8}", tags[0])
    found = json.loads((exp / "eval" / tags[0] / "metrics.json").read_text())
    digest = "per_image_sha256"
    assert {k: v for k, v in found.items() if k != digest} == pytest.approx(
        {k: v for k, v in metrics.items() if k != digest})


def test_staged_qat_rebuilds_earlier_stages_from_the_checkpoint_and_resumes(trained):
    """MQAT's stages as experiments: FPN INQ from the float run, then head LSQ from the
    FPN stage; the later stage keeps the earlier one's frozen weights, resumes, tests."""
    storage = trained  # the float experiment 0, trained once per session
    fpn = ["quantize.init=0", "quantize.rules=[{modules: fpn, algorithm: inq, bits: 2}]",
           "quantize.inq_schedule={0: 1.0}", "training.epochs=1"]
    assert run(main_cmd("--mode", "train", sets=fpn), storage).returncode == 0
    head = ["quantize.init=1", "quantize.rules=[{modules: head, algorithm: lsq, bits: 4}]", "training.epochs=1"]
    out = run(main_cmd("--mode", "train", sets=head), storage)
    assert out.returncode == 0, out.stderr
    stage1 = load(exp_dir(storage, 1) / "saves" / "last.pt")
    stage2 = load(exp_dir(storage, 2) / "saves" / "last.pt")
    assert {r["layer"].split(".")[0] for r in stage2["quant_layers"]} == {"fpn", "head"}
    frozen = [k for k in stage1["model"] if k.endswith("wq.weight_frozen")]
    assert frozen and all(torch.equal(stage1["model"][k], stage2["model"][k]) for k in frozen)
    # continue stage 2 for one more epoch: the optimizer must see the rebuilt layers' steps
    more = run(main_cmd("--mode", "train", "--exp_id", "2", sets=["training.epochs=2"]), storage)
    assert more.returncode == 0, more.stderr
    assert load(exp_dir(storage, 2) / "saves" / "last.pt")["epoch"] == 2
    test = run(main_cmd("--mode", "test", "--exp_id", "2", "--ckpt", "last"), storage)
    assert test.returncode == 0, test.stderr
    assert "fpn" in json.dumps(json.loads((exp_dir(storage, 2) / "quant_report.json").read_text()))


def adi_01d(evaluation: Path) -> float:
    """ADI-0.1d/all recomputed from an evaluation's per-image errors: the percentage of
    instances whose ADI error is below a tenth of the diameter (a second implementation)."""
    import numpy as np
    found = np.load(evaluation / "per_image.npz")
    return float(100.0 * np.mean(found["ADI"] / found["diameter"] < 0.1))


def test_cube_mode_runs_the_module_cube_as_child_runs_and_resumes(trained):
    """Each of the 2^3 - 1 module subsets is one probe child that quantizes exactly those
    modules; the cube records what each child's own per-image results score, its change
    from the float child's, and ranks single modules by that change (ties in module
    order), all recomputed here from the children's files, not from cube.json. The tiny
    runs detect nothing, so every score is 0 and the ranking is the tie order: ordering by
    value is checked on the paper's T-A2 numbers in test_mqat_search."""
    import itertools
    storage = trained  # the float experiment 0, trained once per session
    sets = ["quantize.init=0", "mqat.stage_epochs=1", "quantize.inq_schedule={0: 1.0}"]
    out = run(main_cmd("--mode", "cube", sets=sets), storage)
    assert out.returncode == 0, out.stdout + out.stderr
    exp = exp_dir(storage, 1)
    result = json.loads((exp / "mqat" / "cube.json").read_text())
    modules = ["backbone", "fpn", "head"]
    float_metric = adi_01d(exp / "children" / "float" / "eval" / "float")
    assert result["float_metric"] == float_metric
    probed = {frozenset(m for m in modules if r["bits"][m] == 2) for r in result["cube"]}
    assert len(result["cube"]) == 7 and probed == {frozenset(c) for k in (1, 2, 3)
                                                   for c in itertools.combinations(modules, k)}
    scores = {}
    for row in result["cube"]:
        assert set(row["bits"].values()) <= {2, 32}
        name = "_".join(f"{m}{row['bits'][m]}" for m in modules) + "__"
        child = exp / "children" / name / "stage1"
        assert row["evaluation"] == f"children/{name}/stage1/eval/epoch_0001"
        layers = load(child / "saves" / "last.pt")["quant_layers"]
        assert {r["layer"].split(".")[0] for r in layers} == {m for m in modules if row["bits"][m] == 2}, name
        assert {(r["algorithm"], r["bits"]) for r in layers} == {("inq", 2)}
        scores[frozenset(m for m in modules if row["bits"][m] == 2)] = adi_01d(child / "eval" / "epoch_0001")
        assert row["metric"] == scores[frozenset(m for m in modules if row["bits"][m] == 2)]
        assert row["delta"] == row["metric"] - float_metric
    change = {m: scores[frozenset([m])] - float_metric for m in modules}
    assert result["ranking"] == sorted(modules, key=lambda m: (-change[m], modules.index(m)))
    # the campaign's plan lists exactly the children the run made
    assert planned_keys("cube", sets, storage) == set(json.loads((exp / "mqat" / "ledger.json").read_text()))
    assert "### Module cube at 2 bits" in out.stdout and (exp / "tables" / "cube.md").is_file()
    # continuing the experiment re-runs nothing
    stamps = {p: p.stat().st_mtime_ns for p in (exp / "children").rglob("last.pt")}
    again = run(main_cmd("--mode", "cube", "--exp_id", "1"), storage)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in (exp / "children").rglob("last.pt")} == stamps


@pytest.mark.parametrize("launcher", ["horovodrun", "torchrun"])
def test_hawq_mode_allocates_bits_under_the_budget_and_trains_them(trained, launcher):
    """A search (traces, an ILP, a child training) on 2 ranks, under either launcher."""
    storage = trained  # the float experiment 0, trained once per session
    sets = ["quantize.init=0", "hawq.epochs=1", "hawq.samples=2", "hawq.batches=1", "hawq.min_compression=6.0",
            r"quantize.exclude=['backbone\.features\.init_block\.conv']"]
    out = run(main_cmd("--mode", "hawq", sets=sets), storage, ranks=2, launcher=launcher)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((exp_dir(storage, 1) / "hawq" / "allocation.json").read_text())
    assert result["compression"] >= 6.0 and set(result["bits"].values()) <= {2, 4, 8}
    assert "backbone.features.init_block.conv" not in result["bits"]
    assert set(result["traces"]) == set(result["bits"])  # a trace for every candidate layer
    # 1 batch on each of 2 ranks: each rank's 2 vectors are its samples, 4 pooled, so each
    # trace has a standard error
    assert all(math.isfinite(t["trace"]) and t["trace"] != 0 and t["samples"] == 4 and t["se"] > 0
               for t in result["traces"].values())
    qat = load(exp_dir(storage, 1) / "children" / "qat" / "saves" / "last.pt")
    assert {r["layer"]: r["bits"] for r in qat["quant_layers"]} == result["bits"]
    assert "HAWQ-V3 allocation" in out.stdout and "metric" in result
    # the table pairs HAWQ-V3 with the float start, scored in the child `float`
    assert result["float_evaluation"] == "children/float/eval/float"
    assert (exp_dir(storage, 1) / result["float_evaluation"] / "per_image.npz").is_file()
    table = (exp_dir(storage, 1) / "tables" / "hawq.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert f"{result['float_metric']:.2f} [" in rows["float"] and f"{result['metric']:.2f} [" in rows["HAWQ-V3"]
    assert f"| {result['metric'] - result['float_metric']:.2f} [" in rows["HAWQ-V3"]
    # continuing the experiment keeps the allocation and the finished QAT child
    stamps = {p: p.stat().st_mtime_ns for p in (exp_dir(storage, 1)).rglob("*.pt")}
    again = run(main_cmd("--mode", "hawq", "--exp_id", "1"), storage)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in (exp_dir(storage, 1)).rglob("*.pt")} == stamps
    assert "HAWQ-V3 allocation" not in again.stdout


def test_mqat_mode_runs_cube_flow_and_bit_search_to_a_compressed_model(trained):
    storage = trained  # the float experiment 0, trained once per session
    sets = ["quantize.init=0", "mqat.stage_epochs=1", "quantize.inq_schedule={0: 1.0}", "mqat.grid=[2, 8]",
            "mqat.min_compression=[4.0, 8.0]", "mqat.baselines.uniform_algorithms=[lsq]",
            "mqat.baselines.uniform_bits=[8]", "mqat.baselines.hawq=[4.0]",
            "mqat.baselines.ablation_module=fpn", "mqat.baselines.ablation_bits=[8, 2, 1]",
            "hawq.epochs=1", "hawq.samples=2", "hawq.batches=1"]
    out = run(main_cmd("--mode", "mqat", sets=sets), storage)
    assert out.returncode == 0, out.stdout + out.stderr
    exp = exp_dir(storage, 1)
    result = json.loads((exp / "mqat" / "result.json").read_text())
    plan = json.loads((exp / "mqat" / "bit_plan.json").read_text())
    assert result["order"] == json.loads((exp / "mqat" / "cube.json").read_text())["ranking"]
    # one result per budget (T-A4's two MQAT points), each the best of its own candidates
    assert [p["budget"] for p in result["points"]] == [b["budget"] for b in plan["budgets"]] == [4.0, 8.0]
    for point, budget in zip(result["points"], plan["budgets"]):
        assert point["compression"] >= point["budget"]
        assert len(budget["assignments"]) < budget["full_grid"] == 8
        assert [c["bits"] for c in point["candidates"]] == budget["assignments"]
        assert point["metric"] == max(c["metric"] for c in point["candidates"])
        # the winner's last stage holds every module quantized at its bits
        final = load(Path(point["experiment"]) / "saves" / "last.pt")
        quantized = {r["layer"].split(".")[0]: r["bits"] for r in final["quant_layers"]}
        assert quantized == {m: b for m, b in point["bits"].items() if b != 32}
        assert f"MQAT at >= {point['budget']:g}x: bits" in out.stdout
    # baselines: the uniform LSQ run quantizes every module at 8 bits, the 1-bit FPN is the
    # sign code, the 2-bit FPN is the cube's probe (not run again)
    ledger = json.loads((exp / "mqat" / "ledger.json").read_text())
    # the plan: the cube's and the baselines' children exactly; the bit search's candidates
    # are what the budgets admit before the cube pins a module (an upper bound)
    planned = planned_keys("mqat", sets, storage)
    searched = {k for k in ledger if "|" in k and not k.endswith("|")}  # ordered: flow candidates
    assert set(ledger) - searched == planned["fixed"] and len(searched) <= planned["bits"]
    uniform = load(Path(ledger["lsq:backbone=8,fpn=8,head=8|"]["experiment"]) / "saves" / "last.pt")
    assert {(r["layer"].split(".")[0], r["algorithm"], r["bits"]) for r in uniform["quant_layers"]} == {
        (m, "lsq", 8) for m in ("backbone", "fpn", "head")}
    one = load(Path(ledger["backbone=32,fpn=1,head=32|"]["experiment"]) / "saves" / "last.pt")
    assert {(r["algorithm"], r["bits"]) for r in one["quant_layers"]} == {("symmetric", 1)}
    assert len(list((exp / "children").glob("backbone32_fpn2_head32__"))) == 1
    baselines = json.loads((exp / "mqat" / "baselines.json").read_text())
    assert [r["bits"] for r in baselines["ablation"]["rows"]] == [8, 2, 1]
    assert [row["budget"] for row in baselines["hawq"]] == [4.0] and baselines["hawq"][0]["compression"] >= 4.0
    # all four tables printed and written, with the paper's numbers beside ours
    for name in ("cube", "module_bits", "compression", "depth"):
        assert (exp / "tables" / f"{name}.md").is_file() and (exp / "tables" / f"{name}.csv").is_file()
    compression = (exp / "tables" / "compression.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in compression[1:]] == [
        "float", "float fine-tuned", "LSQ uniform", "HAWQ-V3", "MQAT", "MQAT"]
    assert (exp / "tables" / "compression.png").stat().st_size > 10_000  # T-A4 drawn beside its table
    tuned = load(Path(ledger["finetune:backbone=32,fpn=32,head=32|"]["experiment"]) / "saves" / "last.pt")
    assert tuned["quant_layers"] == [] and tuned["epoch"] == 1
    assert "| 32 | 2 | 32 |" in out.stdout and "83.80" in out.stdout
    # --mode table rebuilds one table from the finished experiment, identical
    cube = (exp / "tables" / "cube.md").read_text()
    (exp / "tables" / "cube.md").unlink()
    table = run(main_cmd("--mode", "table", "--exp_id", "1", "--table", "cube"), storage)
    assert table.returncode == 0, table.stderr
    assert (exp / "tables" / "cube.md").read_text() == cube and "### Module cube" in table.stdout


def planned_keys(mode: str, sets: list[str], storage: Path) -> set[str] | dict:
    """The ledger keys of the children `--mode mode`'s plan lists (a campaign's estimate),
    each worked out here from the child's name: for cube, all of them; for mqat, those of
    the cube and the baselines ("fixed") and the count of bit-search candidates ("bits")."""
    from problems.SwissCube.Widedepth import build_task
    from quantlab.modes import MODES
    from quantlab.mqat.runner import Candidate
    from tests.conftest import config
    cfg = config("SwissCube/Widedepth", "mini", TINY_SET + sets)
    children = MODES[mode].plan(cfg, build_task(cfg, storage / "data"))
    modules, probe = ["backbone", "fpn", "head"], cfg["mqat"]["probe_bits"]

    def key(child) -> str:
        if child.part == "cube":
            chosen = [] if child.name == "float" else child.name.split("+")
            return Candidate.of({m: probe if m in chosen else 32 for m in modules}, None).key
        if "@" in child.name:  # one module at the ablation bits
            module, bits = child.name.split("@")
            return Candidate.of({m: int(bits) if m == module else 32 for m in modules}, None).key
        if child.name == "float fine-tuned":
            return Candidate.of({m: 32 for m in modules}, None, "finetune").key
        if " uniform " in child.name:
            algorithm, _, bits = child.name.split()
            return Candidate.of({m: int(bits) for m in modules}, None, algorithm).key
        return child.name  # hawq-<budget>x
    if mode == "cube":
        return {key(c) for c in children}
    return {"fixed": {key(c) for c in children if c.part in ("cube", "baselines")},
            "bits": sum(c.part == "bits" for c in children)}


def test_accumulated_fp16_gradients_on_two_ranks_step_once_per_group_and_agree(storage):
    # 16 images, batch 4, 2 ranks: 2 batches per rank and epoch; 2 passes a step -> 1 step an epoch
    sets = ["engine.horovod.backward_passes_per_step=2", "engine.horovod.compression=fp16", "engine.eval_every=0"]
    out = run(main_cmd("--mode", "train", sets=sets), storage, ranks=2)
    assert out.returncode == 0, out.stdout + out.stderr
    last = load(exp_dir(storage) / "saves" / "last.pt")
    assert len(set(last["rank_digests"])) == 1
    assert {float(state["step"]) for state in last["optimizer"]["state"].values()} == {2.0}
