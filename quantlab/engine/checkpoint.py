"""Checkpoint files: written atomically, read without unpickling code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quantlab.engine.errors import CheckpointError
from quantlab.files import write_atomic


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a crash leaves either the old file or the new one."""
    write_atomic(path, lambda fh: torch.save(state, fh))


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with `weights_only=True` (no arbitrary pickles)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read as a weights-only checkpoint ({first})")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


def load_matching(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                  ignore_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Load `state_dict` into `module` strictly, naming every mismatch in one error.

    Keys starting with one of `ignore_prefixes` (parts of a public checkpoint that our
    network derives or does not use) are dropped and returned so callers can report them.
    """
    dropped = [k for k in state_dict if k.startswith(ignore_prefixes)] if ignore_prefixes else []
    state = {k: v for k, v in state_dict.items() if k not in set(dropped)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_short(shapes)}")
    if problems:
        raise CheckpointError(f"{source}: does not match the network: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
    return dropped


def _short(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ... (%d more)' % (len(items) - n) if len(items) > n else ''}]"
