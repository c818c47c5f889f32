"""Incremental network quantization (Zhou et al., ICLR 2017) as the MQAT reference code
runs it: weights frozen to power-of-two-free linear levels in growing fractions at the
epochs of `quantize.inq_schedule`, the largest magnitudes first; the rest keep training.
The family holds the quantizer, the controller that freezes on schedule, and the checks
that a schedule is valid and finishes within a training."""
from __future__ import annotations

import torch
from torch import nn

from quantlab.errors import ConfigError
from quantlab.quant import quantizers as Q
from quantlab.quant.algorithms import Algorithm, register
from quantlab.quant.layers import Grid


class INQWeight(nn.Module):
    """Incremental network quantization (Zhou et al. 2017) as the MQAT code stores it.

    `weight_frozen` holds NaN where an entry still trains and its quantized value where it
    is frozen; `weight_s` is the level scale s of linspace(-s, s, 2^b - 1). The forward
    weight is the frozen value where there is one, else the float weight.
    """

    #: buffers whose NaN entries are marks (not yet frozen), not a failure
    nan_marks = ("weight_frozen",)

    def __init__(self, weight: torch.Tensor, bits: int, search_scale: bool = True) -> None:
        """`search_scale=False` leaves s unset (NaN) for a checkpoint to load: the search
        (about a second per large layer) would be overwritten."""
        super().__init__()
        self.bits = bits
        self.register_buffer("weight_frozen", torch.full_like(weight.detach(), float("nan")))
        scale = Q.inq_scale(weight, bits) if search_scale else torch.tensor(float("nan"), dtype=weight.dtype)
        self.register_buffer("weight_s", scale.reshape(1))

    def frozen(self) -> torch.Tensor:
        return ~torch.isnan(self.weight_frozen)

    def trainable(self) -> torch.Tensor:
        """1.0 where an entry still trains (its frozen value is NaN), else 0.0: a float
        mask (NaN != NaN), which CPU kernels vectorize where bool masks are 3-10x slower."""
        return torch.ne(self.weight_frozen, self.weight_frozen, out=torch.empty_like(self.weight_frozen))

    def fraction(self) -> float:
        return float(self.frozen().float().mean())

    @torch.no_grad()
    def freeze(self, weight: torch.Tensor, fraction: float) -> torch.Tensor:
        """Freeze the largest-magnitude trainable entries until int(fraction x entries) are
        frozen (the reference code's count: floor); frozen entries never change again.
        Returns the mask of the new ones."""
        frozen = self.frozen()
        target = int(fraction * weight.numel())
        todo = target - int(frozen.sum())
        new = torch.zeros_like(frozen)
        if todo <= 0:
            return new
        magnitude = weight.detach().abs().masked_fill(frozen, -1.0).flatten()
        new.view(-1)[torch.topk(magnitude, todo).indices] = True
        values = Q.inq_quantize(weight.detach(), self.weight_s, self.bits)
        self.weight_frozen[new] = values[new]
        return new

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """frozen value + w x trainable: the frozen value where there is one, w elsewhere
        (exactly, for finite w), and w's gradient masked to the trainable entries."""
        return torch.addcmul(self.weight_frozen.nan_to_num(0.0), w, self.trainable())

    def integer_state(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state beside the weight that an integer file's dequantized `value` fixes:
        every entry frozen at it."""
        return {"weight_frozen": value}

    def grid(self, w: torch.Tensor) -> Grid:
        """The level grid (step s / half, codes in [-half, half]); fully frozen layers only."""
        if not bool(self.frozen().all()):
            raise ValueError(f"INQ layer is {self.fraction():.0%} frozen; only a fully frozen "
                             "layer has integer weights")
        half = (2 ** self.bits - 2) // 2
        return Grid(self.weight_s.to(w.dtype) / half, -half, half, None)


class INQController:
    """Freezes every INQ layer to the scheduled fraction at the scheduled epochs, and clears
    the optimizer state (momentum, Adam moments) of frozen entries after every step, so a
    frozen entry is never pushed again and the rest restart cleanly after each INQ step."""

    def __init__(self, model: nn.Module, schedule: dict[int, float]) -> None:
        """`schedule`: {epoch: fraction frozen}, as `inq_schedule` checks it."""
        self.layers = [m for m in model.modules() if isinstance(getattr(m, "wq", None), INQWeight)]
        self.schedule = dict(schedule)
        self.fraction = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        due = [f for e, f in self.schedule.items() if e <= epoch]
        target = max(due, default=0.0)
        if target > self.fraction:
            for layer in self.layers:
                layer.wq.freeze(layer.float_weight(), target)
            self.fraction = target

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for layer in self.layers:
            trainable = layer.wq.trainable()
            for value in optimizer.state.get(layer.float_weight(), {}).values():
                if isinstance(value, torch.Tensor) and value.shape == trainable.shape:
                    value.mul_(trainable)

    def state_dict(self) -> dict:
        return {"fraction": self.fraction}

    def load_state_dict(self, state: dict) -> None:
        self.fraction = state["fraction"]


def inq_schedule(schedule: dict) -> dict[int, float]:
    """`quantize.inq_schedule` as {epoch: fraction}: epochs >= 0, fractions in (0, 1]
    that never fall (INQ never unfreezes)."""
    try:
        steps = {int(e): float(f) for e, f in schedule.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"config key 'quantize.inq_schedule': expected {{epoch: fraction}}, got {schedule!r}") from None
    ordered = [steps[e] for e in sorted(steps)]
    if not steps or min(steps) < 0 or any(not 0 < f <= 1 for f in ordered) or ordered != sorted(ordered):
        raise ConfigError(f"config key 'quantize.inq_schedule': {schedule!r} must map epochs >= 0 to fractions "
                          "in (0, 1] that never fall, e.g. {0: 0.5, 2: 1.0}")
    return steps


def inq_finishes(schedule: dict, epochs: int, epochs_key: str) -> None:
    """An INQ schedule that freezes every weight within `epochs` (what `epochs_key` sets):
    INQ layers are integer only once fully frozen, so a schedule that ends later (or below
    100%) would leave a model that cannot be exported, which export would only say after
    the training."""
    steps = inq_schedule(schedule)
    reached = max((f for e, f in steps.items() if e < epochs), default=0.0)
    if reached < 1.0:
        last = max(steps)
        raise ConfigError(f"config key 'quantize.inq_schedule': within the {epochs} epoch(s) of {epochs_key} it freezes "
                          f"{reached:.0%} of the INQ weights (its last step, epoch {last}, freezes {steps[last]:.0%}); "
                          "INQ must reach 100% before the last epoch: shorten the schedule or train longer")


def _weight(weight: torch.Tensor, bits: int, per_channel: bool, axis: int, loading: bool) -> INQWeight:
    """Per tensor; `loading` skips the scale search, whose result the checkpoint overwrites."""
    return INQWeight(weight, bits, search_scale=not loading)


def _check_settings(qcfg: dict, used: bool) -> None:
    """A schedule that is set, or that INQ rules need, is a valid one."""
    if qcfg["inq_schedule"] or used:
        inq_schedule(qcfg["inq_schedule"])


ALGORITHM = register(Algorithm(
    "inq", "incremental freezing to linear levels on quantize.inq_schedule", weight=_weight,
    controller=lambda model, qcfg: INQController(model, inq_schedule(qcfg["inq_schedule"])),
    check_settings=_check_settings,
    check_epochs=lambda qcfg, epochs, key: inq_finishes(qcfg["inq_schedule"], epochs, key)))
