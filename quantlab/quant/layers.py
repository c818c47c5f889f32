"""The quantizers' base classes and the quantized Conv2d / ConvTranspose2d / Linear /
MultiheadAttention that use them.

A quantized layer keeps the float layer's weights (it is built from it, never
re-initialised) and applies a weight quantizer `wq` and, optionally, an input activation
quantizer `aq`; the quantizers themselves live in their families
(quantlab.quant.algorithms), on the base classes here. Per-channel weight quantizers take one scale per output channel, along
the weight's output-channel axis: `channel_axis(layer)` (1 for ConvTranspose2d, whose
weight is [in, out/groups, kH, kW]; 0 for the others). Every piece of state (LSQ steps,
INQ frozen values, calibrated ranges) is a parameter or buffer, so it travels in the
model's state_dict and Horovod's broadcast.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F


#: the bits an unquantized weight or activation counts in sizes and BOPs, and how a bit
#: plan writes a module left in float
FLOAT_BITS = 32


@dataclass
class Grid:
    """The integer grid a quantizer maps onto: value = code x scale, codes from `low` to
    `high` every `step` (1 for linear grids; 2 for the sign code {-1, +1}, which has no
    zero); `scale` broadcasts against the tensor (one value per channel of `axis`, the
    weight's output-channel axis: see `channel_axis`; or one value for the whole tensor
    when `axis` is None). Export and ONNX use it."""

    scale: torch.Tensor
    low: int
    high: int
    axis: int | None
    step: int = 1

    @property
    def levels(self) -> int:
        return (self.high - self.low) // self.step + 1

    def index(self, values: torch.Tensor) -> torch.Tensor:
        """The level index (0 .. levels - 1) of values on the grid, e.g. a quantizer's output."""
        return torch.clamp(torch.round((values / self.scale - self.low) / self.step), 0, self.levels - 1).to(torch.int32)

    def codes(self, values: torch.Tensor) -> torch.Tensor:
        return self.low + self.step * self.index(values)


def channel_axis(layer: nn.Module) -> int:
    """The axis of a layer's weight that holds its output channels, where per-channel
    weight quantizers take their scales: 1 for a transposed convolution (weight [in,
    out/groups, kH, kW]), 0 for the others (Conv2d [out, in/groups, kH, kW], Linear
    [out, in], attention's packed projection [3E, E]). With groups > 1 a transposed
    convolution's axis 1 holds out/groups channels: one scale serves the output channel
    at that position in every group (what a per-axis ONNX DequantizeLinear expresses)."""
    return 1 if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0


class _ChannelWeight(nn.Module):
    """A weight quantizer with one scale per tensor, or (`per_channel`) one per channel of
    `axis`, the weight's output-channel axis (`channel_axis` of its layer)."""

    def __init__(self, bits: int, per_channel: bool, axis: int) -> None:
        super().__init__()
        self.bits, self.per_channel, self.axis = bits, per_channel, axis

    @property
    def grid_axis(self) -> int | None:
        """The Grid's axis: `axis` per channel, None per tensor."""
        return self.axis if self.per_channel else None

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, axis={self.axis}"


class _CalibratedActivation(nn.Module):
    """An activation quantizer whose range comes from a calibration pass.

    While `calibrating` is on, forward records a statistic of its input and passes the
    input unchanged. `calibration_statistic()` returns it and `reduction` says how ranks
    combine it ("max" or "mean"); `end_calibration(value)` fixes the range from the combined
    value. The flag and the range are buffers, so a checkpoint resumes after calibration.
    """

    reduction: str

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calibrating", torch.ones(1, dtype=torch.uint8))  # uint8: Horovod broadcasts no bool

    def is_calibrating(self) -> bool:
        """The flag, read as a Python bool in eager mode. A compiled model is built after
        calibration (the trainer compiles after `calibrate`), so while compiling the flag
        is taken as off: reading it would break the graph at every quantizer."""
        return not torch.compiler.is_compiling() and bool(self.calibrating)

    def calibration_statistic(self) -> torch.Tensor:
        raise NotImplementedError

    def end_calibration(self, value: torch.Tensor) -> None:
        raise NotImplementedError


class _Quantized:
    """What the quantized layers share: taking over the float layer's weights and
    quantizers, and quantizing the input when an activation quantizer is set.

    `weight_name` names the parameter `wq` quantizes (size accounting, INQ, export)."""

    weight_name = "weight"
    wq: nn.Module
    aq: nn.Module | None

    #: while `weights_quantized_once` is on: {} until the first call quantizes the weight
    _once: dict[str, torch.Tensor] | None = None

    def float_weight(self) -> nn.Parameter:
        return getattr(self, self.weight_name)

    def quantized_weight(self) -> torch.Tensor:
        """wq(weight), or the value the first call computed while `weights_quantized_once`
        is on (the same forward values; gradients of the shared uses add up in one node)."""
        if self._once is None:
            return self.wq(self.float_weight())
        if "weight" not in self._once:
            self._once["weight"] = self.wq(self.float_weight())
        return self._once["weight"]

    def _take_over(self, layer: nn.Module, wq: nn.Module, aq: nn.Module | None) -> None:
        self.load_state_dict(layer.state_dict())
        self.wq, self.aq = wq, aq

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.aq is None else self.aq(x)


class QuantConv2d(_Quantized, nn.Conv2d):
    """Conv2d with weight (and optional input) quantization; weights come from `conv`."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, wq: nn.Module, aq: nn.Module | None = None) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype)
        q._take_over(conv, wq, aq)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._input(x), self.quantized_weight(), self.bias)


class QuantConvTranspose2d(_Quantized, nn.ConvTranspose2d):
    """ConvTranspose2d with weight (and optional input) quantization; weights come from
    `conv`. Its weight is [in, out/groups, kH, kW]: per-channel quantizers work on axis 1
    (`channel_axis`)."""

    @classmethod
    def from_float(cls, conv: nn.ConvTranspose2d, wq: nn.Module,
                   aq: nn.Module | None = None) -> "QuantConvTranspose2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.output_padding, conv.groups, conv.bias is not None, conv.dilation, conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype)
        q._take_over(conv, wq, aq)
        return q

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """As nn.ConvTranspose2d.forward: `output_size` picks the output padding."""
        x = self._input(x)
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size,
                                              2, self.dilation)
        return F.conv_transpose2d(x, self.quantized_weight(), self.bias, self.stride, self.padding, output_padding,
                                  self.groups, self.dilation)


class QuantLinear(_Quantized, nn.Linear):
    """Linear with weight (and optional input) quantization; weights come from `linear`."""

    @classmethod
    def from_float(cls, linear: nn.Linear, wq: nn.Module, aq: nn.Module | None = None) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype)
        q._take_over(linear, wq, aq)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._input(x), self.quantized_weight(), self.bias)


class QuantMultiheadAttention(_Quantized, nn.MultiheadAttention):
    """nn.MultiheadAttention with quantized projections (DETR's attention layers).

    `wq` quantizes the packed q/k/v input projection, `out_proj` becomes a QuantLinear
    with its own weight quantizer, and `aq` (optional) quantizes query, key and value
    before the projection. The attention products themselves stay in float.
    """

    weight_name = "in_proj_weight"

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, wq: nn.Module, wq_out: nn.Module,
                   aq: nn.Module | None = None) -> "QuantMultiheadAttention":
        if not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise ValueError("only attention with a packed in_proj_weight and no bias_k/bias_v "
                             "is quantizable")
        q = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None,
                add_zero_attn=mha.add_zero_attn, batch_first=mha.batch_first,
                device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        q._take_over(mha, wq, aq)
        q.out_proj = QuantLinear.from_float(mha.out_proj, wq_out)
        return q

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self._input(query), self._input(key), self._input(value)
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.quantized_weight(),
            self.in_proj_bias, None, None, self.add_zero_attn, self.dropout,
            self.out_proj.quantized_weight(), self.out_proj.bias, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (out.transpose(0, 1) if self.batch_first else out), weights


@contextlib.contextmanager
def weights_quantized_once(module: nn.Module) -> Iterator[None]:
    """Within: every quantized layer of `module` quantizes its weight at its first call and
    reuses that tensor, for a network that runs one layer several times in a forward (a
    head shared over pyramid levels). Nested uses keep the outer one's values."""
    started = [m for m in module.modules() if isinstance(m, _Quantized) and m._once is None]
    for layer in started:
        layer._once = {}
    try:
        yield
    finally:
        for layer in started:
            layer._once = None

