"""Shared fixtures: a tiny synthetic SwissCube set generated once per session, a storage
folder (data and logs roots) holding a copy of it, a float experiment trained once per
session that tests copy in, and a real single-node Slurm."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY = {"image_size": 64, "images": {"train": 16, "validation": 4, "test": 12},
        "images_per_sequence": 8, "depth_range": [150.0, 600.0], "margin": 0.2, "max_rotation": 180.0, "seed": 5}


def config(topology: str, profile: str = "mini", sets: list[str] | tuple = ()) -> dict:
    """The resolved configuration of `Problem/Topology` with the mode sections, as main.py builds it."""
    from quantlab.engine.config import build_config
    from quantlab.modes import config_files
    return build_config(config_files(), REPO / "problems" / topology / "config.yaml", profile, list(sets))


def in_process(entry: Callable[[list[str]], int], argv: list[str], env: dict[str, str],
               cwd: Path) -> subprocess.CompletedProcess:
    """A command's `main(argv)` run in this process, as a subprocess test would see it
    (code, stdout, stderr), without the seconds a new process spends importing torch. For
    commands that end at their checks or only read (plan); what main changes in the
    process (the variables in `env`, the folder, the stop-signal handlers) is put back."""
    import contextlib
    import io
    import os
    import signal
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    saved_env, saved_cwd = {k: os.environ.get(k) for k in env}, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry(argv)
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    from problems.SwissCube.generator import generate
    root = tmp_path_factory.mktemp("data") / "SwissCube-tiny"
    generate(root, TINY)
    return root


@pytest.fixture()
def storage(tmp_path, tiny_root) -> Path:
    """A hard_storage.json whose data root already holds the tiny synthetic set."""
    (tmp_path / "data").mkdir()
    shutil.copytree(tiny_root, tmp_path / "data" / "SwissCube-tiny")
    (tmp_path / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    return tmp_path


@pytest.fixture(scope="session")
def float_experiment(tmp_path_factory, tiny_root) -> Path:
    """The logs root of one float training on the tiny set (1 epoch, 1 rank: experiment
    0), trained once per session: most QAT and search tests start from it."""
    from tests.test_engine import main_cmd, run
    folder = tmp_path_factory.mktemp("float")
    (folder / "data").mkdir()
    shutil.copytree(tiny_root, folder / "data" / "SwissCube-tiny")
    (folder / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    out = run(main_cmd("--mode", "train", sets=["training.epochs=1"]), folder)
    assert out.returncode == 0, out.stdout + out.stderr
    return folder / "logs"


@pytest.fixture()
def trained(storage, float_experiment) -> Path:
    """`storage` whose logs already hold the float experiment 0 (a copy of the session's)."""
    shutil.copytree(float_experiment, storage / "logs")
    return storage


@pytest.fixture()
def slurm(tmp_path_factory) -> dict:
    """A real single-node Slurm (systems/local_slurm.py) for one test: the environment
    that points sbatch and squeue at it."""
    from systems.local_slurm import SlurmUnavailable, start, stop
    folder = tmp_path_factory.mktemp("slurm")
    try:
        env = start(folder)
    except SlurmUnavailable as exc:
        pytest.skip(f"Slurm cannot start here: {exc}")
    yield env
    stop(folder)
