"""The sensitivity schemes, one object each: which estimator traces which objective, at
which weights. A new scheme is one entry here (and, where its objective is new, one task
hook)."""
from __future__ import annotations

from dataclasses import dataclass

from quantlab.errors import ConfigError


@dataclass(frozen=True)
class Scheme:
    name: str
    #: hutchinson (Hessian trace, HAWQ-V2), fisher (squared gradients), or None: no traces
    estimator: str | None = None
    #: the loss traced: the task's training loss, its distillation loss to the float
    #: model's outputs, or its critical-category loss
    objective: str = "loss"
    #: traced at the `ptq.reference_bits` weights W_q, and the error measured from W_q
    #: (Huang et al.'s "quant" variant); else at the float weights
    at_reference: bool = False

    @property
    def hook(self) -> str | None:
        """The optional task method (quantlab.engine.task) the objective needs."""
        return {"distillation": "distillation_loss", "critical": "critical_loss"}.get(self.objective)

    @property
    def teacher(self) -> bool:
        """Whether the float model's outputs are the target (the distillation objective)."""
        return self.objective == "distillation"


SCHEMES = {s.name: s for s in (
    Scheme("uniform"),
    Scheme("loss", "hutchinson"),
    Scheme("output_float", "hutchinson", "distillation"),
    Scheme("output_quant", "hutchinson", "distillation", at_reference=True),
    Scheme("fisher_overall", "fisher"),
    Scheme("fisher_critical", "fisher", "critical"),
)}


def check_hooks(task: object, schemes: list[str], key: str) -> None:
    """Every scheme of `key` is one the task can trace."""
    for name in schemes:
        hook = SCHEMES[name].hook
        if hook is not None and not hasattr(task, hook):
            raise ConfigError(f"config key '{key}': {name} needs the task's {hook}, which "
                              f"{type(task).__name__} does not have")
