"""matplotlib for the figures, loaded when one is drawn: pyplot takes a quarter of a
second to import, which every rank of every run would otherwise pay."""
from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
