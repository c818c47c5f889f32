"""Widedepth's quantization names; the editing itself is generic (quantlab.quant)."""

#: the K = 3 modules of MQAT: backbone B, feature aggregation F, head H
GROUPS = {
    "backbone": r"backbone\..*",
    "fpn": r"fpn\..*",
    "head": r"head\..*",
}

#: named layer sets a recipe or `quantize.exclude` may use
SETS = {
    "first_last": [r"backbone\.features\.init_block\.conv", r"head\.(cls_logits|pose_pred)"],
}
