"""The run context: what a mode, a child run or a probe needs, in one frozen object."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch

from quantlab.engine.config import Config
from quantlab.engine.distributed import World
from quantlab.engine.logbook import Logbook
from quantlab.engine.task import Task
from quantlab.progress import line


@dataclasses.dataclass(frozen=True)
class RunContext:
    task: Task
    cfg: Config
    world: World
    logbook: Logbook
    device: torch.device
    #: the weights a run starts from: `quantize.init` resolved to a file (None: random)
    start: Path | None = None
    #: the checkpoint a continued training run restores
    resume: Path | None = None
    #: the mode's command-line options (`ckpt`, `table`)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def child(self, name: str, cfg: Config | None = None) -> "RunContext":
        """The context of a child run in `children/<name>/`, with its own configuration."""
        return dataclasses.replace(self, logbook=self.logbook.child(name), cfg=self.cfg if cfg is None else cfg,
                                   resume=None)

    def say(self, message: str) -> None:
        """Print on the main rank only."""
        if self.world.is_main:
            line(message)
