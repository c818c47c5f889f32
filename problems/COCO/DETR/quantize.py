"""DETR's quantization names; the editing itself is generic (quantlab.quant)."""

#: the groups of the two DETR quantization papers (Yang et al. 2024; Huang et al.): backbone, encoder (with the input projection),
#: decoder, and the class / box heads (the final FFN layers, which stay float in
#: Huang et al., section DETR quantization details: quantizing them collapses PTQ; `quantize.exclude: [heads]`)
GROUPS = {
    "backbone": r"backbone\..*",
    "encoder": r"input_proj|transformer\.encoder\..*",
    "decoder": r"transformer\.decoder\..*",
    "heads": r"(class_embed|bbox_embed)(\..*)?",
}

#: named layer sets a recipe or `quantize.exclude` may use
SETS: dict[str, list[str]] = {}
