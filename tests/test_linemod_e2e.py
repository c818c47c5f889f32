"""LINEMOD / ZebraPose end to end through main.py on a tiny synthetic set: a 2-rank
training run whose metrics one process reproduces, the loss's histogram state across
ranks and through kill-and-resume, and a tiny `--mode mqat` writing the T-A6 table."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.test_engine import PY, load, run
from tests.test_linemod import TINY_SET, lm_root  # noqa: F401  (the session fixture)

TRAIN = [*TINY_SET, "training.batch_size=4", "training.epochs=2", "engine.threads=1", "engine.save_every=1",
         "engine.eval_every=1", "evaluation.batch_size=1"]


def main_cmd(*args: str, sets: list[str] = ()) -> list[str]:
    cmd = [str(REPO / "main.py"), "--problem", "LINEMOD", "--topology", "ZebraPose", *args]
    for s in [*TRAIN, *sets]:
        cmd += ["--set", s]
    return cmd


def exp_dir(storage: Path, n: int = 0) -> Path:
    return storage / "logs" / "LINEMOD" / "ZebraPose" / f"exp{n:04d}"


@pytest.fixture()
def lm_storage(tmp_path, lm_root) -> Path:  # noqa: F811
    (tmp_path / "data").mkdir()
    shutil.copytree(lm_root, tmp_path / "data" / "LINEMOD-tiny")
    (tmp_path / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    return tmp_path


def hists(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["model"].items() if k.endswith("code_error_hist")}


def test_two_ranks_train_and_one_process_reproduces_the_metrics(lm_storage):
    out = run(main_cmd("--mode", "train"), lm_storage, ranks=2)
    assert out.returncode == 0, out.stdout + out.stderr
    exp = exp_dir(lm_storage)
    last = load(exp / "saves" / "last.pt")
    # ranks start apart (seed + rank) and agree at every checkpoint, histograms included
    assert len(set(last["rank_digests"])) == 1
    assert set(hists(last)) == {"ape.code_error_hist", "eggbox.code_error_hist"}
    assert all(torch.isfinite(h).all() for h in hists(last).values())
    recorded = json.loads((exp / "eval" / "epoch_0002" / "metrics.json").read_text())
    visible = sum(e["visib_fract"] > 0.1 for f in (lm_storage / "data" / "LINEMOD-tiny" / "test").glob("*/scene_gt_info.json")
                  for entries in json.loads(f.read_text()).values() for e in entries)
    assert recorded["count/ape"] + recorded["count/eggbox"] == visible
    test = run(main_cmd("--mode", "test", "--exp_id", "0", "--ckpt", "last"), lm_storage)
    assert test.returncode == 0, test.stdout + test.stderr
    assert json.loads((exp / "eval" / "test_last" / "metrics.json").read_text()) == recorded
    assert "ADD(-S) accuracy" in test.stdout


def test_kill_and_resume_keeps_the_histogram_bit_identical(lm_storage, tmp_path_factory):
    epochs = 3
    sets = [f"training.epochs={epochs}", "engine.eval_every=0"]
    reference = tmp_path_factory.mktemp("reference")
    shutil.copytree(lm_storage, reference, dirs_exist_ok=True)
    assert run(main_cmd("--mode", "train", sets=sets), reference).returncode == 0
    env = dict(os.environ, QUANTLAB_STORAGE=str(lm_storage / "hard_storage.json"))
    proc = subprocess.Popen([PY, *main_cmd("--mode", "train", sets=sets)], env=env, cwd=lm_storage,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, deadline = exp_dir(lm_storage) / "saves" / "epoch_0001.pt", time.time() + 180
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load(exp_dir(lm_storage) / "saves" / "last.pt")["epoch"] < epochs, "finished before the kill"
    resumed = run(main_cmd("--mode", "train", "--exp_id", "0", sets=sets), lm_storage)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load(exp_dir(reference) / "saves" / "last.pt"), load(exp_dir(lm_storage) / "saves" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert all(torch.isfinite(h).all() for h in hists(b).values())


def test_tiny_mqat_writes_the_zebrapose_table(lm_storage):
    assert run(main_cmd("--mode", "train", sets=["training.epochs=1"]), lm_storage).returncode == 0
    sets = ["quantize.init=0", "mqat.stage_epochs=1", "quantize.inq_schedule={0: 1.0}", "mqat.grid=[2, 8]",
            "mqat.baselines.uniform_algorithms=[lsq]", "mqat.baselines.uniform_bits=[8]",
            "hawq.epochs=1", "hawq.samples=1", "hawq.batches=1", "hawq.bits=[2, 4, 8]"]
    out = run(main_cmd("--mode", "mqat", sets=sets), lm_storage, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    exp = exp_dir(lm_storage, 1)
    [point] = json.loads((exp / "mqat" / "result.json").read_text())["points"]
    assert point["compression"] >= 4.0 and set(point["bits"]) == {"backbone", "decoder"}
    # the decoder's transposed convolutions are quantized with the rest of their module
    final = load(Path(point["experiment"]) / "saves" / "last.pt")
    layers = {r["layer"]: r for r in final["quant_layers"]}
    for name in ("ape.net.aspp.upsample_1.0", "eggbox.net.aspp.upsample_2.0"):
        if point["bits"]["decoder"] != 32:
            assert layers[name]["type"] == "ConvTranspose2d" and layers[name]["bits"] == point["bits"]["decoder"]
    baselines = json.loads((exp / "mqat" / "baselines.json").read_text())
    assert [row["budget"] for row in baselines["hawq"]] == [4.0, 4.6]
    assert all(row["compression"] >= row["budget"] for row in baselines["hawq"])
    rows = [line.split(",") for line in (exp / "tables" / "compression.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["float", "float fine-tuned", "LSQ uniform", "HAWQ-V3", "HAWQ-V3", "MQAT"]
    paper = {(r[0], r[-1]) for r in rows}
    assert {("float", "76.9"), ("HAWQ-V3", "71.11"), ("HAWQ-V3", "69.87"), ("MQAT", "72.54")} <= paper
    assert (exp / "tables" / "objects.md").is_file() and "ape" in (exp / "tables" / "objects.md").read_text()
