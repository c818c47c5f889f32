"""LINEMOD / Occluded-LINEMOD in the BOP layout with the ZebraPose ground truth."""
