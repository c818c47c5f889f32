"""DETR as in facebookresearch/detr `models/`: a torchvision ResNet with frozen BatchNorm,
sine position encoding, a post-norm transformer whose decoder returns every layer's
output, class and box heads. Parameter names follow the official checkpoint exactly
(`backbone.0.body.*`, `transformer.{encoder,decoder}.*`, `input_proj`, `query_embed`,
`class_embed`, `bbox_embed.layers.*`), so released weights load strictly."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all buffers (no
    num_batches_tracked, as in the official checkpoint)."""

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((n,), value))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def small_resnet(layers: list[int], width: int, dilation: bool, norm_layer: type[nn.Module]) -> nn.Module:
    """A ResNet of BasicBlocks with base width `width` (torchvision fixes it at 64), named
    like torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, ...), for profiles that train on CPU."""
    body = nn.Sequential()
    body.add_module("conv1", nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False))
    body.add_module("bn1", norm_layer(width))
    body.add_module("relu", nn.ReLU(inplace=True))
    body.add_module("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    inplanes = width
    for i, count in enumerate(layers):
        planes, stride = width * 2 ** i, 1 if i == 0 or (i == 3 and dilation) else 2
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), norm_layer(planes))
        blocks = [resnet.BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm_layer)]
        blocks += [resnet.BasicBlock(planes, planes, norm_layer=norm_layer) for _ in range(count - 1)]
        body.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        inplanes = planes
    return body


NORMS = {"frozen": FrozenBatchNorm2d, "batch": nn.BatchNorm2d}


class Backbone(nn.Module):
    """ResNet body up to layer4 (`body`); as in DETR, conv1 and layer1 are frozen (a
    pretrained stem) unless `freeze_stem` is off (a backbone trained from scratch). `norm`
    `frozen` is DETR's; `batch` lets a small backbone trained from scratch normalise."""

    def __init__(self, name: str, layers: list[int] | None, dilation: bool, train: bool,
                 freeze_stem: bool = True, width: int = 64, norm: str = "frozen") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"network.norm: {norm!r} is not one of {sorted(NORMS)}")
        if name == "resnet50":
            net = resnet.resnet50(weights=None, replace_stride_with_dilation=[False, False, dilation],
                                  norm_layer=NORMS[norm])
            self.num_channels = 2048
        elif name == "small":
            net = small_resnet(layers or [1, 1, 1, 1], width, dilation, NORMS[norm])
            self.num_channels = width * 8
        else:
            raise ValueError(f"network.backbone: {name!r} is not resnet50 or small")
        for pname, p in net.named_parameters():
            if not train or (freeze_stem and not any(f"layer{i}" in pname for i in (2, 3, 4))):
                p.requires_grad_(False)
        self.body = IntermediateLayerGetter(net, return_layers={"layer4": "0"})

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(images)["0"]
        return x, F.interpolate(mask[None].float(), size=x.shape[-2:])[0].bool()


class PositionEmbeddingSine(nn.Module):
    """The normalised sine encoding of DETR (128 features per axis, temperature 1e4)."""

    def __init__(self, features: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.features, self.temperature, self.scale = features, temperature, 2 * math.pi

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)
        x = not_mask.cumsum(2, dtype=torch.float32)
        y = y / (y[:, -1:, :] + 1e-6) * self.scale
        x = x / (x[:, :, -1:] + 1e-6) * self.scale
        dim = torch.arange(self.features, dtype=torch.float32, device=mask.device)
        dim = self.temperature ** (2 * (dim // 2) / self.features)
        px, py = x[..., None] / dim, y[..., None] / dim
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


class Joiner(nn.Sequential):
    """`backbone.0` is the ResNet, `backbone.1` the (parameter-free) position encoding."""

    def forward(self, images: torch.Tensor, mask: torch.Tensor):
        features, small = self[0](images, mask)
        return features, small, self[1](small).to(features.dtype)


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, padding: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, value=src, key_padding_mask=padding)[0]))
        return self.norm2(src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(src))))))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, padding: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, value=tgt)[0]))
        attended = self.multihead_attn(tgt + query_pos, memory + pos, value=memory, key_padding_mask=padding)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class Encoder(nn.Module):
    def __init__(self, layer: EncoderLayer, count: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(count))

    def forward(self, src, padding, pos):
        for layer in self.layers:
            src = layer(src, padding, pos)
        return src


class Decoder(nn.Module):
    """Returns the shared final norm of every layer's output: [layers, Q, N, d]."""

    def __init__(self, layer: DecoderLayer, count: int, d: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(count))
        self.norm = nn.LayerNorm(d)

    def forward(self, tgt, memory, padding, pos, query_pos):
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, padding, pos, query_pos)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class Transformer(nn.Module):
    def __init__(self, d: int, heads: int, encoder_layers: int, decoder_layers: int, ffn: int,
                 dropout: float) -> None:
        super().__init__()
        self.encoder = Encoder(EncoderLayer(d, heads, ffn, dropout), encoder_layers)
        self.decoder = Decoder(DecoderLayer(d, heads, ffn, dropout), decoder_layers, d)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query, pos):
        n = src.shape[0]
        src, pos = src.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1)
        query = query.unsqueeze(1).repeat(1, n, 1)
        padding = mask.flatten(1)
        memory = self.encoder(src, padding, pos)
        return self.decoder(torch.zeros_like(query), memory, padding, pos, query).transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int, count: int) -> None:
        super().__init__()
        dims = [d_in] + [hidden] * (count - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [d_out]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class DETR(nn.Module):
    """Outputs {pred_logits [N, Q, classes + 1], pred_boxes [N, Q, 4] (cx, cy, w, h in
    0..1), aux_outputs: the same for every decoder layer but the last}."""

    def __init__(self, backbone: str = "resnet50", layers: list[int] | None = None, dilation: bool = False,
                 train_backbone: bool = True, num_classes: int = 91, hidden: int = 256, heads: int = 8,
                 encoder_layers: int = 6, decoder_layers: int = 6, ffn: int = 2048, dropout: float = 0.1,
                 queries: int = 100, freeze_stem: bool = True, width: int = 64, norm: str = "frozen") -> None:
        super().__init__()
        body = Backbone(backbone, layers, dilation, train_backbone, freeze_stem, width, norm)
        self.backbone = Joiner(body, PositionEmbeddingSine(hidden // 2))
        self.transformer = Transformer(hidden, heads, encoder_layers, decoder_layers, ffn, dropout)
        self.input_proj = nn.Conv2d(body.num_channels, hidden, kernel_size=1)
        self.query_embed = nn.Embedding(queries, hidden)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.bbox_embed = MLP(hidden, hidden, 4, 3)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict:
        features, small, pos = self.backbone(images, mask)
        hs = self.transformer(self.input_proj(features), small, self.query_embed.weight, pos)
        logits, boxes = self.class_embed(hs), self.bbox_embed(hs).sigmoid()
        return {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
                "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]}
