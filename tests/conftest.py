"""Shared fixtures: a tiny synthetic SwissCube set generated once per session, a storage
folder (data and logs roots) holding a copy of it, a float experiment trained once per
session that tests copy in, and a real single-node Slurm."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

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
