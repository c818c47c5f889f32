"""Both distributed backends, on 2 real processes each: Horovod under horovodrun and
torch.distributed under torchrun give every collective the project uses the same,
hand-worked results; a launcher whose ranks the backend cannot join is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import REPO

PY = sys.executable
LAUNCH = {"horovod": [str(Path(PY).with_name("horovodrun")), "-np", "2", "-H", "localhost:2", PY],
          "torch": [str(Path(PY).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]}


def expected_step(compression: str) -> list[float]:
    """The SGD step on the mean of the two ranks' gradients, computed in one process."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    grads = []
    for rank in range(2):
        model.zero_grad()
        x = torch.arange(12.0).reshape(4, 3) * (rank + 1) / 10
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    with torch.no_grad():
        for p, a, b in zip(model.parameters(), *grads):
            mean = (a.half() + b.half()).float() / 2 if compression == "fp16" else (a + b) / 2
            p -= 0.5 * mean
    return [*model.weight.flatten().tolist(), *model.bias.tolist()]


@pytest.fixture(scope="module", params=["horovod", "torch"])
def seen(request, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp(request.param)
    done = subprocess.run([*LAUNCH[request.param], str(REPO / "tests" / "collectives_worker.py"), str(out),
                           request.param], capture_output=True, text=True, timeout=120, cwd=out,
                          env=dict(os.environ))  # not what an in-process MPI singleton set underneath
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_every_collective_gives_the_hand_worked_result(seen):
    assert [s["rank"] for s in seen] == [0, 1] and {s["size"] for s in seen} == {2}
    for s in seen:
        assert s["broadcast"] == {"from": 0} and s["gather"] == [0, 10]
        assert s["mean"] == {"a": 1.5, "b": 1.0} and s["scalar"] == 0.5
        assert s["max"] == [2.0] and s["stat_mean"] == [1.5]
        assert s["after_broadcast"] == s["rank0_start"]  # rank 1 started elsewhere
        assert s["buffers"] == [0.5, 0.5]
        assert s["verdict"][0] == "rank 0's verdict"
    assert seen[0]["verdict"][1] is False and seen[1]["verdict"][1] is True  # reported once, by rank 0


def test_a_trained_optimizer_and_scheduler_come_from_rank_0(seen):
    """broadcast_training_state must give every rank rank 0's weights, its filled AdamW
    state (step, moments, lr) and its scheduler's state, which rank 1 had different."""
    rank0, rank1 = (s["trained_before"] for s in seen)
    assert rank0["optimizer"]["0"]["step"] == [1.0] and rank1["optimizer"]["0"]["step"] == [2.0]
    assert rank0["lr"] == [pytest.approx(0.2 / 2)] and rank1["lr"] == [pytest.approx(0.3 / 4)]
    for key in ("weights", "optimizer", "lr", "scheduler"):
        assert rank1[key] != rank0[key], key
    for s in seen:
        assert s["trained_after"] == rank0


def test_gradients_are_averaged_over_ranks(seen):
    for s in seen:
        assert s["step"] == pytest.approx(expected_step("none"), abs=1e-7)
        assert s["step_two_passes"] == pytest.approx(expected_step("none"), abs=1e-6)
        assert s["step_fp16"] == pytest.approx(expected_step("fp16"), abs=1e-6)
        assert s["step_fp16"] != pytest.approx(expected_step("none"), abs=1e-7)  # fp16 did round
    assert seen[0]["step"] == seen[1]["step"]


def test_the_backend_follows_the_launcher(seen):
    assert {s["backend"] for s in seen} in ({"horovod"}, {"torch"})


@pytest.mark.parametrize("backend,torn_down", [("torch", False), ("horovod", True)])
def test_a_torch_process_ends_without_the_teardown_that_aborts_after_a_collective(backend, torn_down, tmp_path):
    """Under torch.distributed the interpreter's teardown can abort a finished rank (a gloo
    thread still releasing a collective's tensors takes the GIL while Python finalizes:
    SIGABRT, about 1 run in 20 on 2 busy cores), so exit_process ends it with os._exit,
    keeping the code and what was printed; Horovod's processes tear down as usual."""
    script = ("import atexit, sys, torch\n"
              f"sys.path.insert(0, {str(REPO)!r})\n"
              "from quantlab.engine import distributed as dist\n"
              f"dist.init(1, backend={backend!r})\n"
              "dist.allreduce_scalar(1.0, 'last')\n"
              "atexit.register(lambda: print('torn down', flush=True))\n"
              "print('done', end='')\n"
              "dist.exit_process(3)\n")
    done = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stdout == ("done" + ("torn down\n" if torn_down else "")), done.stdout


def test_torchrun_with_the_horovod_backend_is_one_line_not_two_experiments(tmp_path):
    """Before: two independent one-rank experiments, each on the whole data."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([*LAUNCH["torch"], str(REPO / "tests" / "collectives_worker.py"), str(tmp_path),
                           "horovod"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode != 0 and not list(tmp_path.glob("rank*.json"))
    assert ("engine.backend: torchrun started 2 ranks, but the horovod backend joined 1; use engine.backend: auto"
            in done.stderr + done.stdout)


def test_torchrun_trains_as_horovodrun_does_and_a_killed_run_resumes_exactly(storage, tmp_path_factory):
    """The main job under both launchers: bit-identical weights (two ranks' a + b is exact
    whichever backend adds); a torchrun run killed outright and resumed under torchrun
    equals the uninterrupted one."""
    import shutil
    import time

    from tests.test_engine import TORCHRUN, exp_dir, load, main_cmd, run
    from tests.test_failures import end_all
    epochs = ["training.epochs=3"]
    folders = {name: tmp_path_factory.mktemp(name) for name in ("horovodrun", "torchrun")}
    for launcher, folder in folders.items():
        shutil.copytree(storage, folder, dirs_exist_ok=True)
        out = run(main_cmd("--mode", "train", sets=epochs), folder, ranks=2, launcher=launcher)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "(train, 2 ranks" in out.stdout
    horovod, torchrun = (load(exp_dir(f) / "saves" / "last.pt") for f in folders.values())
    assert horovod["metrics"] == torchrun["metrics"]
    assert all(torch.equal(horovod["model"][k], torchrun["model"][k]) for k in horovod["model"])
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"))
    proc = subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node", "2", *main_cmd("--mode", "train", sets=epochs)],
                            env=env, cwd=storage, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = exp_dir(storage) / "saves" / "epoch_0001.pt"
    deadline = time.time() + 180
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    end_all(storage)
    proc.wait()
    assert load(exp_dir(storage) / "saves" / "last.pt")["epoch"] < 3, "the run finished before it was killed"
    out = run(main_cmd("--mode", "train", "--exp_id", "0", sets=epochs), storage, ranks=2, launcher="torchrun")
    assert out.returncode == 0, out.stdout + out.stderr
    resumed = load(exp_dir(storage) / "saves" / "last.pt")
    assert resumed["metrics"] == torchrun["metrics"]
    assert all(torch.equal(resumed["model"][k], torchrun["model"][k]) for k in torchrun["model"])


def test_without_horovod_one_process_and_torchrun_run_and_the_horovod_backend_is_one_line(storage, tmp_path,
                                                                                           monkeypatch):
    """Where set-up could not build Horovod (here: an `import horovod` that fails)."""
    from tests.test_engine import exp_dir, main_cmd, run
    blocked = tmp_path / "blocked" / "horovod"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('Horovod did not build here')\n")
    monkeypatch.setenv("PYTHONPATH", f"{blocked.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = run(main_cmd("--mode", "train", sets=["training.epochs=1"]), storage)
    assert out.returncode == 0, out.stdout + out.stderr
    out = run(main_cmd("--mode", "test", "--exp_id", "0", "--ckpt", "last"), storage, ranks=2, launcher="torchrun")
    assert out.returncode == 0 and (exp_dir(storage) / "eval" / "test_last" / "metrics.json").is_file()
    out = run(main_cmd("--mode", "test", "--exp_id", "0", sets=["engine.backend=horovod"]), storage)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
        "error (rank 0): Horovod is not installed in this environment (Horovod did not build here)")


@pytest.mark.xdist_group("slurm")  # one real Slurm at a time (tests/test_campaign_e2e.py)
def test_a_slurm_job_runs_torchrun_through_srun_with_the_profiles_ranks(storage, slurm, tmp_path):
    """systems/launch.py inside an sbatch job: srun starts one torchrun per node, which
    starts the node's ranks ($SLURM_NTASKS_PER_NODE) meeting at the c10d rendezvous."""
    import time

    import yaml

    from tests.test_engine import exp_dir, main_cmd
    profile = tmp_path / "slurm_torchrun_one_node.yaml"
    profile.write_text(yaml.safe_dump({"ranks": 0, "hosts": "slurm", "launcher": "torchrun", "controller": "gloo",
                                       "threads_per_rank": 1, "env": {}}))
    script = tmp_path / "job.sh"
    args = " ".join(f"'{a}'" for a in main_cmd("--mode", "train", sets=["training.epochs=1"])[1:])
    script.write_text(f"#!/bin/bash\nexec {PY} {REPO / 'systems' / 'launch.py'} {profile} -- {args}\n")
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1", **slurm)
    log = tmp_path / "job.out"
    submitted = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                                f"--output={log}", str(script)], env=env, capture_output=True, text=True, cwd=storage)
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.monotonic() + 240
    while subprocess.run(["squeue", "-h", "-j", submitted.stdout.strip()], env=env, capture_output=True,
                         text=True).stdout.strip():
        assert time.monotonic() < deadline, "the Slurm job did not finish in 240 s"
        time.sleep(0.5)
    text = log.read_text()
    assert "(train, 2 ranks, profile mini)" in text, text
    assert (exp_dir(storage) / "saves" / "last.pt").is_file()
