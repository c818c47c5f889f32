"""A tiny MQAT campaign end to end, on the `local` system (two jobs at once) and through a
real single-node Slurm, each interrupted mid-child and submitted again: the tables and
every child's weights equal those of one uninterrupted `--mode mqat` job."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_engine import PY, TINY_SET, main_cmd
from tests.conftest import REPO

#: the smallest search that still has every part and kind of child: the cube, three-stage
#: bit-search candidates, a baseline shared with the cube (fpn at 2 bits), one of its own
#: (the sign code), float fine-tuning, a uniform run and one HAWQ-V3 child with its traces
MQAT_SETS = ["mqat.stage_epochs=1", "quantize.inq_schedule={0: 1.0}", "mqat.grid=[2, 8]", "mqat.min_compression=[4.0]",
             "mqat.baselines.uniform_algorithms=[lsq]", "mqat.baselines.uniform_bits=[8]",
             "mqat.baselines.ablation_module=fpn", "mqat.baselines.ablation_bits=[2, 1]", "mqat.baselines.hawq=[4.0]",
             "hawq.epochs=1", "hawq.samples=2", "hawq.batches=1"]
TABLES = ("cube", "module_bits", "compression", "depth")
SETS = [*TINY_SET, "training.epochs=1"]


#: the runs that share this module's reference (`root`), and the real Slurm, go to one
#: pytest-xdist worker: the reference is made once and one Slurm runs at a time
SERIAL = pytest.mark.xdist_group("slurm")


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_root) -> Path:
    """Storage with the tiny set, and the reference: one float training, one `--mode mqat`."""
    root = tmp_path_factory.mktemp("campaign")
    (root / "data").mkdir()
    shutil.copytree(tiny_root, root / "data" / "SwissCube-tiny")
    (root / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    for args in (["--mode", "train"], ["--mode", "mqat", "--set", "quantize.init=0", *sum((["--set", s] for s in MQAT_SETS), [])]):
        out = subprocess.run([PY, *main_cmd(*args, sets=["training.epochs=1"])], env=env_of(root), cwd=root,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
    return root


def env_of(root: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, QUANTLAB_STORAGE=str(root / "hard_storage.json"), PYTHONUNBUFFERED="1", **extra)


def write_campaign(root: Path, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "campaign": name, "problem": "SwissCube", "topology": "Widedepth", "profile": "mini",
        "images": {"train": 16, "eval": 12},
        "experiments": {"float": {"mode": "train", "overrides": SETS},
                        "mqat": {"mode": "mqat", "start": "float", "overrides": [*SETS, *MQAT_SETS]}},
        "tables": {"T-A2": {"experiment": "mqat", "table": "cube", "parts": ["cube"]},
                   "T-A4": {"experiment": "mqat", "table": "compression", "parts": ["cube", "bits", "baselines"]}}}))
    return path


def campaign(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [PY, str(REPO / "systems" / "campaign.py"), *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def experiments(root: Path) -> Path:
    return root / "logs" / "SwissCube" / "Widedepth"


def mqat_exp(root: Path, name: str) -> Path:
    state = json.loads((root / "logs" / "campaigns" / name / "state.json").read_text())
    return experiments(root) / f"exp{state['experiments']['mqat']:04d}"


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def first_stage_saved(exp: Path) -> bool:
    """A three-stage bit-search candidate has finished its first stage and started its
    second (so it is mid-child)."""
    return any(exp.glob("children/*__*-*-*/stage2/config.yaml"))


def assert_same_as_reference(root: Path, exp: Path) -> None:
    reference = experiments(root) / "exp0001"
    for table in TABLES:
        assert (exp / "tables" / f"{table}.md").read_text() == (reference / "tables" / f"{table}.md").read_text()
    ours = json.loads((exp / "mqat" / "ledger.json").read_text())
    theirs = json.loads((reference / "mqat" / "ledger.json").read_text())
    assert sorted(ours) == sorted(theirs)
    for key, entry in theirs.items():
        assert {k: v for k, v in ours[key].items() if k != "experiment"} == {
            k: v for k, v in entry.items() if k != "experiment"}, key
        if "experiment" in entry and Path(entry["experiment"], "saves", "last.pt").is_file():
            a = torch.load(Path(entry["experiment"], "saves", "last.pt"), weights_only=True)["model"]
            b = torch.load(Path(ours[key]["experiment"], "saves", "last.pt"), weights_only=True)["model"]
            assert all(torch.equal(a[t], b[t]) for t in a), key
    result, expected = (json.loads((e / "mqat" / "result.json").read_text()) for e in (exp, reference))
    assert result["order"] == expected["order"]
    assert [(p["bits"], p["metric"]) for p in result["points"]] == [(p["bits"], p["metric"]) for p in expected["points"]]


@SERIAL
def test_local_campaign_killed_mid_child_resumes_to_the_single_job_tables(root):
    env = env_of(root)
    path = write_campaign(root, "tiny-local")
    cmd = [PY, str(REPO / "systems" / "campaign.py"), "submit", str(path), "--system", "local"]
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    wait_for(lambda: (root / "logs" / "campaigns" / "tiny-local" / "state.json").is_file()
             and "mqat" in json.loads((root / "logs" / "campaigns" / "tiny-local" / "state.json").read_text())
             ["experiments"] and first_stage_saved(mqat_exp(root, "tiny-local")), 400, "a candidate's first stage")
    os.killpg(first.pid, signal.SIGKILL)  # the submit, its job processes and their runs: nothing saves
    first.wait()
    exp = mqat_exp(root, "tiny-local")
    stage1 = next(exp.glob("children/*__*-*-*/stage2/config.yaml")).parent.with_name("stage1") / "saves" / "last.pt"
    kept = stage1.stat().st_mtime_ns
    status = campaign("status", str(path), env=env)
    assert status.returncode == 0 and "failed" in status.stdout and "children done" in status.stdout
    again = campaign("submit", str(path), "--system", "local", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "every job done" in again.stdout and "float: started" not in again.stdout  # float finished before
    assert stage1.stat().st_mtime_ns == kept  # the finished stage was not trained again
    assert_same_as_reference(root, exp)
    collected = campaign("collect", str(path), env=env)
    assert collected.returncode == 0, collected.stderr
    tables = (root / "logs" / "campaigns" / "tiny-local" / "tables.md").read_text()
    assert "## T-A2" in tables and "## T-A4" in tables
    assert (exp / "tables" / "compression.md").read_text().strip() in tables
    # a third submit finds everything done and runs nothing
    third = campaign("submit", str(path), "--system", "local", env=env)
    assert third.returncode == 0 and "started" not in third.stdout


@SERIAL
def test_slurm_campaign_cancelled_mid_child_resumes_to_the_single_job_tables(root, slurm, tmp_path):
    env = env_of(root, **slurm)
    system = tmp_path / "slurm_one_node.yaml"
    system.write_text(yaml.safe_dump({"ranks": 1, "hosts": "slurm", "controller": "gloo", "threads_per_rank": 1,
                                      "env": {}, "scheduler": "slurm", "jobs": 2,
                                      "sbatch": ["--ntasks=1", "--cpus-per-task=1"]}))
    path = write_campaign(root, "tiny-slurm")
    first = campaign("submit", str(path), "--system", str(system), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "mqat:cube: Slurm job" in first.stdout and "array of 2" in first.stdout and "afterok" in first.stdout
    wait_for(lambda: first_stage_saved(mqat_exp(root, "tiny-slurm")), 400, "a candidate's first stage")
    subprocess.run(["scancel", "--me"], env=env, check=True)  # every job of the campaign, mid-child
    wait_for(lambda: not subprocess.run(["squeue", "-h", "--me"], env=env, capture_output=True, text=True).stdout.strip(),
             60, "the cancelled jobs to leave the queue")
    again = campaign("submit", str(path), "--system", str(system), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "float:" not in again.stdout  # done before the cancel: not submitted again
    exp = mqat_exp(root, "tiny-slurm")
    wait_for(lambda: (exp / "mqat" / "result.json").is_file() and not subprocess.run(
        ["squeue", "-h", "--me"], env=env, capture_output=True, text=True).stdout.strip(), 500, "the campaign")
    status = campaign("status", str(path), "--system", str(system), env=env)
    assert len(re.findall(r"^\s+\S+\s+done\s", status.stdout, re.M)) == 5, status.stdout
    assert_same_as_reference(root, exp)


DETR_TINY = ["data.root=COCO-tiny", "data.synthetic.params.image_size=64", "data.synthetic.params.images={train: 8, val: 4}",
             "input.train_scales=[64]", "input.val_size=64", "input.max_size=64", "training.batch_size=4",
             "evaluation.batch_size=2", "engine.threads=1"]
PTQ_SETS = ["ptq.images=4", "ptq.samples=1", "ptq.targets=[4]"]
FISHER_SETS = ["ptq.images=4", "fisher.epochs=1"]


def without_paths(ledger: Path) -> dict:
    return {k: {f: v for f, v in e.items() if f != "experiment"} for k, e in json.loads(ledger.read_text()).items()}


def test_detr_campaign_fans_out_ptq_schemes_and_fisher_runs_to_the_single_job_results(tmp_path):
    env = env_of(tmp_path)
    (tmp_path / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    path = tmp_path / "detr.yaml"
    path.write_text(yaml.safe_dump({
        "campaign": "tiny-detr", "problem": "COCO", "topology": "DETR", "profile": "mini",
        "experiments": {"float": {"mode": "train", "overrides": [*DETR_TINY, "training.epochs=1"]},
                        "ptq": {"mode": "ptq", "start": "float", "overrides": [*DETR_TINY, *PTQ_SETS]},
                        "fisher": {"mode": "fisher", "start": "float", "overrides": [*DETR_TINY, *FISHER_SETS]}}}))
    out = campaign("submit", str(path), "--system", "local", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ptq:schemes [2/2]: started" in out.stdout and "fisher:runs [2/2]: started" in out.stdout
    logs = tmp_path / "logs" / "COCO" / "DETR"
    state = json.loads((tmp_path / "logs" / "campaigns" / "tiny-detr" / "state.json").read_text())["experiments"]
    for mode, sets in (("ptq", PTQ_SETS), ("fisher", FISHER_SETS)):
        cmd = [PY, str(REPO / "main.py"), "--problem", "COCO", "--topology", "DETR", "--mode", mode]
        for s in [*DETR_TINY, *sets, f"quantize.init={state['float']}"]:
            cmd += ["--set", s]
        single = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert single.returncode == 0, single.stdout + single.stderr
        reference = logs / re.search(r"exp\d{4}", single.stdout).group(0)
        ours = logs / f"exp{state[mode]:04d}"
        for ledger in ("results.json", "traces.json"):
            assert without_paths(ours / mode / ledger) == without_paths(reference / mode / ledger), (mode, ledger)
        table = "detr_ptq" if mode == "ptq" else "detr_fisher"
        assert (ours / "tables" / f"{table}.md").read_text() == (reference / "tables" / f"{table}.md").read_text()
