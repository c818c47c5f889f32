"""ZebraPose on LINEMOD / Occluded-LINEMOD: `build_task` is what main.py looks up."""
from problems.LINEMOD.ZebraPose.task import ZebraPoseTask as build_task

__all__ = ["build_task"]
