"""Controllers: epoch schedules that change quantizers during training (pulp quantlab's pattern).

A controller has `on_epoch_start(epoch)`, `after_step(optimizer)` and state_dict /
load_state_dict; the trainer calls the hooks, saves the state in every checkpoint and
broadcasts it from rank 0 at start and after a resume. A quantizer family that needs one
builds it (`Algorithm.controller`, e.g. INQ's in quantlab.quant.algorithms.inq).
"""
from __future__ import annotations

from typing import Protocol

import torch


class Controller(Protocol):
    def on_epoch_start(self, epoch: int) -> None: ...

    def after_step(self, optimizer: torch.optim.Optimizer) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
