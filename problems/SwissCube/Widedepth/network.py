"""WDR (wide-depth-range) pose network: DarkNet-53 backbone, FPN P3-P7, shared pose head.

Module and parameter names follow the public WDR checkpoints, so released weights load
without surgery, and the three MQAT modules are the top-level children `backbone`, `fpn`
and `head`. `width` and `depth` shrink the network for the CPU `mini` profile.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from quantlab.quant.layers import weights_quantized_once

DARKNET_CHANNELS = (64, 128, 256, 512, 1024)
DARKNET_RESIDUALS = (1, 2, 8, 8, 4)


class ConvBlock(nn.Module):
    """conv (no bias) -> BatchNorm -> LeakyReLU(0.1): keys `conv.*`, `bn.*`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.activ = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activ(self.bn(self.conv(x)))


class DarkUnit(nn.Module):
    """Residual unit: 1x1 to half the channels, 3x3 back, plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBlock(channels, channels // 2, 1)
        self.conv2 = ConvBlock(channels // 2, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class DarkNet53(nn.Module):
    """`features.init_block`, then `features.stage{1..5}.unit{1..}` (unit1 downsamples).

    Returns the outputs of stages 3, 4, 5 (strides 8, 16, 32).
    """

    def __init__(self, width: float = 1.0, depth: float = 1.0) -> None:
        super().__init__()
        channels = [max(8, int(round(c * width))) for c in DARKNET_CHANNELS]
        self.out_channels = channels[2:]
        self.features = nn.Sequential()
        c_in = max(4, int(round(32 * width)))
        self.features.add_module("init_block", ConvBlock(3, c_in, 3))
        for s, (c_out, n_res) in enumerate(zip(channels, DARKNET_RESIDUALS), 1):
            stage = nn.Sequential()
            stage.add_module("unit1", ConvBlock(c_in, c_out, 3, stride=2))
            for u in range(max(1, int(round(n_res * depth)))):
                stage.add_module(f"unit{u + 2}", DarkUnit(c_out))
            self.features.add_module(f"stage{s}", stage)
            c_in = c_out
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.features
        x = f.stage2(f.stage1(f.init_block(x)))
        c3 = f.stage3(x)
        c4 = f.stage4(c3)
        c5 = f.stage5(c4)
        return [c3, c4, c5]


class TopBlocks(nn.Module):
    """P6 from C5 by a stride-2 3x3 conv, P7 from ReLU(P6) likewise."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(c_in, c_out, 3, 2, 1)
        self.p7 = nn.Conv2d(c_out, c_out, 3, 2, 1)

    def forward(self, c5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(c5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """1x1 laterals + 3x3 outputs with nearest top-down upsampling, then P6/P7.

    Lateral lists are indexed by backbone stage (entries 0 and 1 unused), matching the
    public keys `fpn.inner_convs.{2,3,4}` and `fpn.out_convs.{2,3,4}`.
    """

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.inner_convs = nn.ModuleList([None, None] + [nn.Conv2d(c, channels, 1) for c in in_channels])
        self.out_convs = nn.ModuleList([None, None] + [nn.Conv2d(channels, channels, 3, padding=1)
                                                       for _ in in_channels])
        self.top_blocks = TopBlocks(in_channels[-1], channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        inner = self.inner_convs[-1](feats[-1])
        outs = [self.out_convs[-1](inner)]
        for feat, lateral, out in zip(feats[-2::-1], list(self.inner_convs)[-2:1:-1],
                                      list(self.out_convs)[-2:1:-1]):
            inner = lateral(feat) + F.interpolate(inner, scale_factor=2.0, mode="nearest")
            outs.insert(0, out(inner))
        return outs + self.top_blocks(feats[-1])


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class PoseHead(nn.Module):
    """Shared over levels: cls tower -> logits (n_class - 1); pose tower -> 16 per class."""

    def __init__(self, channels: int, n_classes: int, n_conv: int, gn_groups: int,
                 prior: float, n_levels: int) -> None:
        super().__init__()

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(n_conv):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(gn_groups, channels), nn.ReLU()]
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.pose_tower = tower()
        self.cls_logits = nn.Conv2d(channels, n_classes, 3, padding=1)
        self.pose_pred = nn.Conv2d(channels, n_classes * 16, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior) / prior))
        self.scales = nn.ModuleList([Scale() for _ in range(n_levels)])

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The same convolutions on every level: a quantized head quantizes its weights
        once per forward, not once per level."""
        with weights_quantized_once(self):
            logits = [self.cls_logits(self.cls_tower(f)) for f in feats]
            poses = [scale(self.pose_pred(self.pose_tower(f))) for f, scale in zip(feats, self.scales)]
        return logits, poses


class Widedepth(nn.Module):
    """Image (N, 3, S, S) -> per level: class logits (N, C, h, w), keypoints (N, 16C, h, w)."""

    def __init__(self, n_classes: int = 1, width: float = 1.0, depth: float = 1.0,
                 fpn_channels: int = 256, head_convs: int = 4, gn_groups: int = 32,
                 prior: float = 0.01) -> None:
        super().__init__()
        self.backbone = DarkNet53(width, depth)
        self.fpn = FPN(self.backbone.out_channels, fpn_channels)
        self.head = PoseHead(fpn_channels, n_classes, head_convs, gn_groups, prior, n_levels=5)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.head(self.fpn(self.backbone(images)))


def unwrap_public_state(state: dict) -> dict:
    """A public WDR file is a raw state_dict or {"model": state_dict}."""
    if "model" in state and isinstance(state["model"], dict):
        return state["model"]
    return state
