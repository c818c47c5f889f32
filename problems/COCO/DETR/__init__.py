"""DETR on COCO: `build_task` is what main.py looks up."""
from problems.COCO.DETR.task import DETRTask as build_task

__all__ = ["build_task"]
