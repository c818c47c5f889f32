"""ZebraPose's quantization names. The model holds one network per object under its name
(`ape.net.resnet...`), so every pattern spans all objects: one bit plan for all."""

#: MQAT's two modules (T-A6): B, the ResNet-34 encoder, and D, the ASPP and decoder
GROUPS = {
    "backbone": r"\w+\.net\.resnet\..*",
    "decoder": r"\w+\.net\.aspp\..*",
}

#: named layer sets a recipe or `quantize.exclude` may use
SETS = {
    "first_last": [r"\w+\.net\.resnet\.resnet_layer_1\.0", r"\w+\.net\.aspp\.conv_1x1_4"],
}
