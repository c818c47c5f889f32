"""Campaigns: the shipped files plan, bad files stop before anything is submitted, the
estimate is the formula worked by hand, and racing jobs run a child once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, config

PY = sys.executable
CAMPAIGN = [PY, str(REPO / "systems" / "campaign.py")]
SHIPPED = ("mqat_swisscube", "mqat_linemod", "detr_ptq", "detr_fisher")


def storage_env(root: Path) -> dict[str, str]:
    (root / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    return dict(os.environ, QUANTLAB_STORAGE=str(root / "hard_storage.json"), PYTHONUNBUFFERED="1")


def campaign(*args: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CAMPAIGN, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


TIMING = {"train_float": 0.08, "train_quant": 0.1, "eval": 0.05, "device": "test device"}


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_campaign_plans_its_graph_and_device_hours(name, tmp_path):
    env = storage_env(tmp_path)
    spec = yaml.safe_load((REPO / "systems" / "campaigns" / f"{name}.yaml").read_text())
    where = f"{spec['problem']}/{spec['topology']}@{spec['profile']}"
    out = campaign("plan", name, "--system", "slurm", env=env)
    assert out.returncode == 0, out.stderr
    assert "no timings" in out.stdout and "measure" in out.stdout
    for experiment in spec["experiments"]:
        assert f"\n  {experiment} " in out.stdout or f"\n  {experiment}:" in out.stdout
    (tmp_path / "logs" / "campaigns" / "timings").mkdir(parents=True)
    (tmp_path / "logs" / "campaigns" / "timings" / "slurm.json").write_text(json.dumps({where: TIMING}))
    out = campaign("plan", name, "--system", "slurm", env=env)
    assert out.returncode == 0, out.stderr
    assert "device-hours on test device" in out.stdout
    for table in spec["tables"]:
        assert f"table {table}" in out.stdout


def hours(epochs: float, images: int, per_image: float, evals: int, eval_images: int) -> float:
    return (epochs * images * per_image + evals * eval_images * TIMING["eval"]) / 3600


def test_fisher_campaign_estimate_is_the_formula_by_hand(tmp_path):
    """detr_fisher: 3 schemes x 2 regularizer weights, each fisher.epochs of QAT on COCO's
    118,287 images and one evaluation of 5,000; the two Fisher schemes' first runs add
    ptq.images backward passes (their traces)."""
    env = storage_env(tmp_path)
    cfg = config("COCO/DETR", "paper", ["quantize.init=0"])
    runs = 3 * 2 * hours(cfg["fisher"]["epochs"], 118287, TIMING["train_quant"], 1, 5000)
    traces = 2 * cfg["ptq"]["images"] * TIMING["train_quant"] / 3600
    (tmp_path / "logs" / "campaigns" / "timings").mkdir(parents=True)
    (tmp_path / "logs" / "campaigns" / "timings" / "local.json").write_text(
        json.dumps({"COCO/DETR@paper": TIMING}))
    out = campaign("plan", "detr_fisher", env=env)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "table B critical-category QAT" in ln)
    assert float(line.split()[-2]) == pytest.approx(runs + traces, abs=0.05)
    assert "fisher:runs x2" in out.stdout and "6 child runs" in out.stdout


def test_swisscube_campaign_counts_the_float_model_in_each_table(tmp_path):
    """T-A2 (the cube) = the float training + the float evaluation + 7 probes of
    stage_epochs each; the float training is epochs x 40,000 images with an evaluation
    every eval_every epochs."""
    env = storage_env(tmp_path)
    cfg = config("SwissCube/Widedepth", "paper", ["quantize.init=0"])
    epochs, every = cfg["training"]["epochs"], cfg["engine"]["eval_every"]
    float_run = hours(epochs, 40000, TIMING["train_float"], -(-epochs // every), 10000)
    cube = hours(0, 40000, 0, 1, 10000) + 7 * hours(cfg["mqat"]["stage_epochs"], 40000, TIMING["train_quant"], 1, 10000)
    (tmp_path / "logs" / "campaigns" / "timings").mkdir(parents=True)
    (tmp_path / "logs" / "campaigns" / "timings" / "local.json").write_text(
        json.dumps({"SwissCube/Widedepth@paper": TIMING}))
    out = campaign("plan", "mqat_swisscube", env=env)
    line = next(ln for ln in out.stdout.splitlines() if "table T-A2 cube" in ln)
    assert float(line.split()[-2]) == pytest.approx(float_run + cube, abs=0.05)


def test_a_search_with_seeds_plans_its_children_once_per_seed():
    """seeds=[0, 1, 2] runs a cube's children three times (modes.execute), so the plan counts them three times."""
    from problems.SwissCube.Widedepth import build_task
    from quantlab.campaign.estimate import experiment_children
    cfg = config("SwissCube/Widedepth", "mini", ["quantize.init=0"])
    task = build_task(cfg, REPO / "data")
    once = experiment_children("cube", cfg, task)
    seeded = experiment_children("cube", {**cfg, "seeds": [0, 1, 2]}, task)
    assert len(once) == 8 and len(seeded) == 24
    assert [c.name for c in seeded[8:16]] == [f"seed1/{c.name}" for c in once]
    assert [c._replace(name="") for c in seeded[16:]] == [c._replace(name="") for c in once]


BAD = {
    "topology": ("problem: SwissCube\ntopology: Widedeep\nexperiments: {a: {mode: train}}\n", "Widedeep"),
    "mode": ("problem: SwissCube\ntopology: Widedepth\nexperiments: {a: {mode: trian}}\n", "unknown mode 'trian'"),
    "profile": ("problem: SwissCube\ntopology: Widedepth\nprofile: huge\nexperiments: {a: {mode: train}}\n",
                "unknown profile 'huge'"),
    "key": ("problem: SwissCube\ntopology: Widedepth\nexperiments:\n  a: {mode: train, overrides: [training.epoch=3]}\n",
            "training.epoch"),
    "campaign key": ("problem: SwissCube\ntopology: Widedepth\nexperimets: {}\n", "experimets"),
    "dependency": ("problem: SwissCube\ntopology: Widedepth\nexperiments: {a: {mode: mqat, start: flaot}}\n",
                   "'flaot'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_campaign_is_one_line_before_anything_is_submitted(case, tmp_path):
    text, named = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = campaign("submit", str(path), env=storage_env(tmp_path))
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and str(path) in out.stderr and named in out.stderr
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("exp*"))


RACER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from types import SimpleNamespace
    sys.path.insert(0, sys.argv[1])
    import horovod.torch as hvd
    hvd.init()
    from quantlab.engine.claims import Jobs
    from quantlab.engine.distributed import World
    folder, worker = Path(sys.argv[2]), sys.argv[3] == "worker"
    ctx = SimpleNamespace(world=World(0, 1, 0, 1), options={"worker": "p" if worker else None}, say=print)
    jobs = Jobs(ctx, "race", ("p",))
    ledger = jobs.ledger(folder / "ledger.json")
    while not (folder / "go").exists():
        time.sleep(0.01)
    def run():
        with open(folder / "ran", "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        time.sleep(1.5)
        return {"metric": 1.0, "by": os.getpid()}
    with jobs.part("p"):
        entry = ledger.obtain("child", run)
    print(json.dumps(entry))
""")


@pytest.mark.parametrize("second", ["waits", "worker"])
def test_two_jobs_racing_for_one_child_run_it_once(second, tmp_path):
    """Two processes ask for the same child at the same instant: one runs it; the other
    waits and takes its entry (a whole run) or, as a worker of the part, leaves it (None)."""
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    kinds = ["waits", second]
    procs = [subprocess.Popen([PY, str(script), str(REPO), str(tmp_path), k], stdout=subprocess.PIPE, text=True)
             for k in kinds]
    time.sleep(2.0)  # both started and waiting for the signal
    (tmp_path / "go").touch()
    outs = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    ran = (tmp_path / "ran").read_text().split()
    assert len(ran) == 1
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert ledger["child"]["by"] == int(ran[0])
    runner = [o for o in outs if o is not None and o["by"] == int(ran[0])]
    assert runner
    if second == "waits":
        assert outs[0] == outs[1] == ledger["child"]
    else:
        assert None in outs or procs[1].pid == int(ran[0])
