"""Shared fixtures: a tiny synthetic SwissCube set generated once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY = {"image_size": 64, "images": {"train": 16, "validation": 4, "test": 12},
        "images_per_sequence": 8, "depth_range": [150.0, 600.0], "margin": 0.2, "max_rotation": 180.0, "seed": 5}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    from problems.SwissCube.generator import generate
    root = tmp_path_factory.mktemp("data") / "SwissCube-tiny"
    generate(root, TINY)
    return root
