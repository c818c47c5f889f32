"""Rows of results (dicts) as a markdown table, the one layout the benchmarks print and save."""
from __future__ import annotations


def cell(value: object) -> str:
    """A value as table text: floats to 3 significant digits (enough for timings), None as a
    dash, pipes escaped so a message cannot break the row."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    """A markdown table of `rows`: the given columns, or every key in order of first
    appearance (rows may differ: a failed measurement has fewer keys)."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
