"""ZebraPose network (`BinaryCodeNet_Deeplab`): ResNet-34 output-stride-8 encoder, ASPP, and a
decoder that upsamples back to half the input size with skips from the stem and layer1.

Module names follow the official forward path, so an official checkpoint loads strictly once
its aliased encoder keys are dropped (`official_state`). The official encoder registers the
stem, layer1 and layer2 twice (`net.resnet.resnet.*` and `net.resnet.resnet_layer_{1,2,3}.*`,
the same module objects); we register them once, on the forward path, because module
replacement by name would otherwise quantize the copy that forward never calls. The MQAT
modules are `net.resnet` (backbone) and `net.aspp` (decoder). `width`, `blocks` and
`code_bits` shrink the network for the CPU `mini` profile.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from quantlab.errors import CheckpointError

#: the official duplicate prefixes and the forward-path modules they alias
OFFICIAL_ALIASES: dict[str, str] = {
    "net.resnet.resnet.0.": "net.resnet.resnet_layer_1.0.",
    "net.resnet.resnet.1.": "net.resnet.resnet_layer_1.1.",
    "net.resnet.resnet.4.": "net.resnet.resnet_layer_2.1.",
    "net.resnet.resnet.5.": "net.resnet.resnet_layer_3.0.",
}
ALIAS_ROOT = "net.resnet.resnet."


def scaled(channels: int, width: float) -> int:
    """A base channel count times `width`, at least one channel."""
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """ZebraPose's own BasicBlock: unlike torchvision's it dilates both 3x3 convs, which the
    output-stride-8 stages need. `downsample` holds keys only when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


def make_layer(c_in: int, c_out: int, n_blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """`n_blocks` BasicBlocks; only the first changes stride or channels."""
    return nn.Sequential(*(BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, dilation)
                           for i in range(n_blocks)))


class Encoder(nn.Module):
    """`ResNet34_OS8` on its forward path: stem (x_128), maxpool + layer1 (x_64), layer2, then
    the dilated layer4/layer5 that keep output stride 8."""

    def __init__(self, width: float, blocks: Sequence[int]) -> None:
        super().__init__()
        c64, c128, c256, c512 = (scaled(c, width) for c in (64, 128, 256, 512))
        self.out_channels = c512
        self.skip_channels = c64
        self.resnet_layer_1 = nn.Sequential(nn.Conv2d(3, c64, 7, 2, 3, bias=False), nn.BatchNorm2d(c64),
                                            nn.ReLU(inplace=True))
        self.resnet_layer_2 = nn.Sequential(nn.MaxPool2d(3, 2, 1), make_layer(c64, c64, blocks[0]))
        self.resnet_layer_3 = nn.Sequential(make_layer(c64, c128, blocks[1], stride=2))
        self.layer4 = make_layer(c128, c256, blocks[2], dilation=2)
        self.layer5 = make_layer(c256, c512, blocks[3], dilation=4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_high at stride 8, x_128 at stride 2, x_64 at stride 4)."""
        x_128 = self.resnet_layer_1(x)
        x_64 = self.resnet_layer_2(x_128)
        x_high = self.layer5(self.layer4(self.resnet_layer_3(x_64)))
        return x_high, x_128, x_64


def upsample(c_in: int, c_out: int) -> nn.Sequential:
    """x2 transposed conv, then two 3x3 convs, each followed by BN and ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """ASPP (1x1, 3x3 at dilation 6/12/18, image pooling), fused by a 1x1 conv, then two
    upsampling stages with the layer1 and stem features concatenated after each."""

    def __init__(self, c_in: int, c_skip: int, channels: int, c_out: int) -> None:
        super().__init__()
        self.conv_1x1_1 = nn.Conv2d(c_in, channels, 1)
        self.bn_conv_1x1_1 = nn.BatchNorm2d(channels)
        self.conv_3x3_1 = nn.Conv2d(c_in, channels, 3, padding=6, dilation=6)
        self.bn_conv_3x3_1 = nn.BatchNorm2d(channels)
        self.conv_3x3_2 = nn.Conv2d(c_in, channels, 3, padding=12, dilation=12)
        self.bn_conv_3x3_2 = nn.BatchNorm2d(channels)
        self.conv_3x3_3 = nn.Conv2d(c_in, channels, 3, padding=18, dilation=18)
        self.bn_conv_3x3_3 = nn.BatchNorm2d(channels)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_1x1_2 = nn.Conv2d(c_in, channels, 1)
        self.bn_conv_1x1_2 = nn.BatchNorm2d(channels)
        self.conv_1x1_3 = nn.Conv2d(5 * channels, channels, 1)
        self.bn_conv_1x1_3 = nn.BatchNorm2d(channels)
        self.upsample_1 = upsample(channels, channels)
        self.upsample_2 = upsample(channels + c_skip, channels)
        self.conv_1x1_4 = nn.Conv2d(channels + c_skip, c_out, 1)

    def forward(self, x_high: torch.Tensor, x_128: torch.Tensor, x_64: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.bn_conv_1x1_2(self.conv_1x1_2(self.avg_pool(x_high))))
        branches = [F.relu(self.bn_conv_1x1_1(self.conv_1x1_1(x_high))),
                    F.relu(self.bn_conv_3x3_1(self.conv_3x3_1(x_high))),
                    F.relu(self.bn_conv_3x3_2(self.conv_3x3_2(x_high))),
                    F.relu(self.bn_conv_3x3_3(self.conv_3x3_3(x_high))),
                    F.interpolate(pooled, size=x_high.shape[2:], mode="bilinear", align_corners=False)]
        x = F.relu(self.bn_conv_1x1_3(self.conv_1x1_3(torch.cat(branches, 1))))
        x = self.upsample_2(torch.cat([self.upsample_1(x), x_64], 1))
        return self.conv_1x1_4(torch.cat([x, x_128], 1))


class DeepLab(nn.Module):
    """The official `DeepLabV3` wrapper: keys `resnet.*` and `aspp.*`."""

    def __init__(self, width: float, blocks: Sequence[int], c_out: int) -> None:
        super().__init__()
        self.resnet = Encoder(width, blocks)
        self.aspp = ASPP(self.resnet.out_channels, self.resnet.skip_channels, scaled(256, width), c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(*self.resnet(x))


class ZebraPoseNet(nn.Module):
    """Image crop [B, 3, H, W] (BGR, ImageNet-normalised) -> (mask logit [B, 1, H/2, W/2],
    code logits [B, code_bits, H/2, W/2]): output channel 0 is the mask, 1.. the code, the
    most significant bit first.

    `code_error_hist` is the loss's per-bit error EMA (NaN until the first training step).
    It is training state, kept as a buffer here because checkpoints and rank broadcasts carry
    the model's state, not the loss object's; it is not in official checkpoints.
    """

    #: NaN in this buffer means "no training step yet", not a failure (engine.health)
    nan_marks = ("code_error_hist",)

    def __init__(self, width: float = 1.0, blocks: tuple[int, int, int, int] | list[int] = (3, 4, 6, 3),
                 code_bits: int = 16) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"blocks must give layer1, layer2, layer4, layer5, got {list(blocks)}")
        self.code_bits = code_bits
        self.net = DeepLab(width, blocks, 1 + code_bits)
        self.register_buffer("code_error_hist", torch.full((code_bits,), float("nan")))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask, code = torch.split(self.net(x), [1, self.code_bits], 1)
        return mask, code


def official_state(state: dict[str, Any], source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights of an official checkpoint (`{"model_state_dict": ...}` or a raw state_dict)
    without the `net.resnet.resnet.*` duplicates, and the keys dropped.

    A duplicate is dropped only if it equals the forward-path tensor it aliases, so a file
    whose copies disagree (which one would the author have meant?) is refused."""
    weights = state.get("model_state_dict", state)
    if not isinstance(weights, dict):
        raise CheckpointError(f"{source}: model_state_dict is a {type(weights).__name__}, not a state_dict")
    kept, dropped = {}, []
    for key, value in weights.items():
        if not key.startswith(ALIAS_ROOT):
            kept[key] = value
            continue
        prefix = next((p for p in OFFICIAL_ALIASES if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"{source}: {key} is under {ALIAS_ROOT} but aliases no module of the forward path")
        target = OFFICIAL_ALIASES[prefix] + key[len(prefix):]
        if target not in weights:
            raise CheckpointError(f"{source}: {key} has no forward-path counterpart {target}")
        if not _same(value, weights[target]):
            raise CheckpointError(f"{source}: {key} differs from {target}, which it should alias")
        dropped.append(key)
    return kept, dropped


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
            and a.shape == b.shape and torch.equal(a, b))
