"""DETR's modules by name pattern; the editing itself is generic (quantlab.quant)."""

#: the groups of papers.md B and C: backbone, encoder (with the input projection),
#: decoder, and the class / box heads
GROUPS = {
    "backbone": r"backbone\..*",
    "encoder": r"input_proj|transformer\.encoder\..*",
    "decoder": r"transformer\.decoder\..*",
    "heads": r"(class_embed|bbox_embed)(\..*)?",
}

#: the final class and box FFN layers, which stay float (quantizing them collapses PTQ)
HEADS = [r"class_embed", r"bbox_embed\.layers\.\d+"]
