"""Widedepth's MQAT modules by name pattern; the editing itself is generic (quantlab.quant)."""

#: the K = 3 modules of MQAT: backbone B, feature aggregation F, head H
GROUPS = {
    "backbone": r"backbone\..*",
    "fpn": r"fpn\..*",
    "head": r"head\..*",
}

#: the first and last layers, which recipes usually leave in float
FIRST_LAST = [r"backbone\.features\.init_block\.conv", r"head\.(cls_logits|pose_pred)"]
