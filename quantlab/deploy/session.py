"""A deployed model behind the torch module interface, so the task's own evaluation
(`engine.evaluation.evaluate`) scores it exactly as it scores the fake-quant model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree

from quantlab.deploy.runtime import session


class DeployedModel(nn.Module):
    """Runs an ONNX model in onnxruntime on CPU tensors; returns its outputs shaped like
    the torch model's (`spec`, from `graph.output_spec`), on the inputs' device."""

    def __init__(self, model: Path, names: list[str], spec: Any, threads: int) -> None:
        super().__init__()
        self.names, self.spec = names, spec
        self.session = session(model, threads)

    def forward(self, *inputs: torch.Tensor) -> Any:
        feeds = {name: x.detach().cpu().numpy() for name, x in zip(self.names, inputs)}
        outputs = self.session.run(None, feeds)
        device = inputs[0].device
        return _pytree.tree_unflatten([torch.from_numpy(o).to(device) for o in outputs], self.spec)
