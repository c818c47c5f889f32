"""Checkpoint files: written atomically, read without unpickling code, and the readers that
turn every supported layout into the weights of our network.

`read_weights` tries the readers in order and uses the first that accepts the file:
  quantlab    our training checkpoints: the recorded quantized layers are rebuilt first
  integer     our integer export (quantlab.quant.export): the same, from its recipe
  reference   the MQAT reference code's files: its INQ layers become ours
  public      the task's public layout (a raw state_dict, {"model": ...}, ...)
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from quantlab.engine.health import non_finite_tensor
from quantlab.engine.task import Task
from quantlab.errors import CheckpointError
from quantlab.files import write_atomic
from quantlab.quant import export, reference
from quantlab.quant.editing import rebuild

FORMAT = "quantlab/1"
#: what a weights-only load accepts besides tensors and plain containers: classes known
#: to be inert (DETR's official training checkpoints hold its argparse.Namespace)
SAFE_GLOBALS = [argparse.Namespace]


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a crash leaves either the old file or the new one."""
    write_atomic(path, lambda fh: torch.save(state, fh))


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with `weights_only=True` (no arbitrary pickles)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read as a weights-only checkpoint ({first})")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


def load_matching(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                  ignore: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Load `state_dict` into `module` strictly, naming every mismatch in one error.

    `ignore` maps key prefixes of a public checkpoint that our network derives or does not
    use to the reason; those keys are dropped and returned by reason, for the log."""
    dropped: dict[str, list[str]] = {}
    for key in state_dict:
        prefix = next((p for p in ignore or {} if key.startswith(p)), None)
        if prefix is not None:
            dropped.setdefault(ignore[prefix], []).append(key)
    gone = {k for keys in dropped.values() for k in keys}
    state = {k: v for k, v in state_dict.items() if k not in gone}
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


@dataclass(frozen=True)
class Reader:
    """One checkpoint layout: `read(model, state, task, source)` loads it into `model`
    and returns (report rows of the layers it quantized, lines for the log)."""
    name: str
    accepts: Callable[[dict], bool]
    read: Callable[[nn.Module, dict, Task, str], tuple[list[dict], list[str]]]


def _quantlab(model: nn.Module, state: dict, task: Task, source: str) -> tuple[list[dict], list[str]]:
    rows = rebuild(model, state.get("quant_layers", []))
    load_matching(model, state["model"], source)
    return rows, []


def _integer(model: nn.Module, state: dict, task: Task, source: str) -> tuple[list[dict], list[str]]:
    rows = rebuild(model, state["recipe"])
    export.load_integer(model, state, source)
    return rows, []


def _public(model: nn.Module, state: dict, task: Task, source: str) -> tuple[list[dict], list[str]]:
    dropped = task.load_weights(model, state, source)
    return [], [f"{source}: {len(keys)} key(s) {reason}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
                for reason, keys in dropped.items()]


def _reference(model: nn.Module, state: dict, task: Task, source: str) -> tuple[list[dict], list[str]]:
    prefix = getattr(task, "reference_prefix", None)
    if prefix is None:
        raise CheckpointError(f"{source}: an MQAT reference checkpoint, but {type(task).__name__} does not say "
                              "where the reference code wraps its network (reference_prefix)")
    network, inq, copies = reference.convert(state, prefix, source)
    rows = reference.quantize_like(model, inq, network, source)
    _, notes = _public(model, network, task, source)
    bits = ", ".join(sorted({f"{b}-bit" for b in inq.values()}))
    return rows, [f"{source}: MQAT reference layout, {len(inq)} INQ layers ({bits}), {len(copies)} duplicated "
                  f"keys outside {prefix!r} dropped", *notes]


READERS = (Reader("quantlab", lambda s: s.get("format") == FORMAT, _quantlab),
           Reader("integer", lambda s: s.get("format") == export.FORMAT, _integer),
           Reader("reference", reference.is_reference, _reference),
           Reader("public", lambda s: True, _public))


def read_weights(model: nn.Module, path: Path, task: Task) -> tuple[list[dict], list[str]]:
    """Load `path` into `model` with the first reader that accepts it. Weights that are not
    finite are refused, as a diverged model is refused before it is saved: evaluated, they
    would score 0 everywhere and look like a result."""
    state = load(path)
    reader = next(r for r in READERS if r.accepts(state))
    found = reader.read(model, state, task, str(path))
    bad = non_finite_tensor(model)
    if bad is not None:
        raise CheckpointError(f"{path}: tensor '{bad}' holds NaN or infinite values; the checkpoint is not usable")
    return found
