"""WDR on SwissCube: `build_task` is what main.py looks up."""
from problems.SwissCube.Widedepth.task import WidedepthTask as build_task

__all__ = ["build_task"]
