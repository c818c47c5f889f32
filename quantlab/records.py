"""What a run records for people and for a resumed run: tables and ledgers.

A `Table` is printed as Markdown and written as Markdown and CSV under `tables/`. A
`Ledger` is a JSON file of finished results keyed by name, rewritten atomically after each
one, so a search that is interrupted resumes without redoing what it finished. Several
jobs may share one ledger (a campaign's fan-out): a record is merged, under the ledger's
lock, with what the others wrote since, so no job's entry is lost.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from quantlab.errors import ExperimentError
from quantlab.files import exclusive_lock, write_text_atomic
from quantlab.metrics.intervals import Estimate, combine


@dataclass
class Table:
    name: str
    title: str
    header: list[str]
    rows: list[list[Any]]
    #: lines printed under the table: what a reader must know to read its cells
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        cells = [[_cell(v) for v in row] for row in self.rows]
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "---|" * len(self.header)]
        notes = ["", *(f"- {note}" for note in self.notes)] if self.notes else []
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells] + self._legend() + notes)

    def _legend(self) -> list[str]:
        """What the interval cells mean, under a table that has them."""
        found = [v for row in self.rows for v in row if isinstance(v, Estimate)]
        if not found:
            return []
        level = f"{100 * found[0].level:g}%"
        text = (f"value [{level} bootstrap interval over the test images]; * the paired {level} interval of its "
                "difference from float (in a difference column: from the column's reference) excludes 0")
        seeds = max(e.seeds for e in found)
        if seeds > 1:
            text += (f"; value = mean over {seeds} seeds ± their standard deviation, interval of that mean over "
                     "images and seeds")
        return ["", text]

    def csv(self) -> str:
        """One column per plain column; an interval column becomes the value, its bounds,
        its mark and (over seeds) its standard deviation and seed count."""
        estimated = [any(isinstance(row[i], Estimate) for row in self.rows) for i in range(len(self.header))]
        header: list[str] = []
        for name, wide in zip(self.header, estimated):
            header += [name, f"{name} low", f"{name} high", f"{name} marked", f"{name} sd", f"{name} seeds"] \
                if wide else [name]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for row in self.rows:
            cells: list[Any] = []
            for value, wide in zip(row, estimated):
                if not wide:
                    cells.append("" if value is None else value)
                elif isinstance(value, Estimate):
                    low, high = value.bounds or ("", "")
                    cells += [value.value, low, high, int(value.marked), "" if value.spread is None else value.spread,
                              value.seeds]
                else:
                    cells += ["" if value is None else value, "", "", "", "", ""]
            writer.writerow(cells)
        return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Estimate):
        return value.markdown()
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def over_seeds(tables: list[Table]) -> Table:
    """The tables one build gave per seed, as one: interval cells combined (mean, spread
    over seeds, interval of the mean), equal cells kept, differing cells (e.g. the bits a
    search chose) joined with ' / '."""
    first = tables[0]
    if any(len(t.rows) != len(first.rows) or any(len(a) != len(b) for a, b in zip(t.rows, first.rows))
           for t in tables):
        raise ValueError(f"table {first.name}: the seeds' tables differ in shape")
    rows = []
    for cells in zip(*(t.rows for t in tables)):
        row = []
        for column in zip(*cells):
            if all(isinstance(v, Estimate) for v in column):
                row.append(combine(list(column)))
            elif all(v == column[0] for v in column):
                row.append(column[0])
            else:
                row.append(" / ".join(_cell(v) for v in column))
        rows.append(row)
    shared = [note for note in dict.fromkeys(n for t in tables for n in t.notes) if all(note in t.notes for t in tables)]
    own = [f"(seed run {i + 1} of {len(tables)}) {note}" for i, t in enumerate(tables) for note in t.notes
           if note not in shared]
    return Table(first.name, first.title, first.header, rows, shared + own)


@dataclass(frozen=True)
class TableSpec:
    """A table a mode's results feed: `build(folder, task, cfg)` reads the experiment
    folder (never recomputes), with the paper's numbers from the task where it has them;
    `figure(table, task, path)`, where the paper draws the table, draws it beside it."""
    name: str
    mode: str
    build: Callable[[Path, Any, dict], Table]
    figure: Callable[[Table, Any, Path], None] | None = None


def save_tables(folder: Path, tables: list[Table], writer: bool = True) -> str:
    """Write tables/<name>.{md,csv} (main rank) and return their Markdown."""
    if writer:
        for table in tables:
            write_text_atomic(folder / "tables" / f"{table.name}.md", table.markdown() + "\n")
            write_text_atomic(folder / "tables" / f"{table.name}.csv", table.csv())
    return "\n\n".join(t.markdown() for t in tables)


def read_json(path: Path) -> dict:
    """A recorded JSON file, or {} when the run has not written it (yet). Records are
    written atomically, so one that does not parse was damaged after it was written (a
    copy cut short, an edit by hand): a one-line error naming it, never a traceback."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExperimentError(f"{path}: damaged record, not JSON ({exc}); restore it, or delete it to redo "
                              "what it recorded") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: damaged record, expected a JSON object, found {type(data).__name__}")
    return data


#: the key of a ledger entry that records a child which raised, with its error
FAILED = "failed"


def failed(entry: dict[str, Any] | None) -> bool:
    """Whether a ledger entry records a child that raised (run again by the next job that
    runs the whole search), rather than its result."""
    return entry is not None and FAILED in entry


def finished(path: Path) -> dict[str, dict[str, Any]]:
    """A ledger's results as the tables read them: its entries without the failures."""
    return {key: entry for key, entry in read_json(path).items() if not failed(entry)}


class Ledger:
    """Finished results by key; every rank keeps the entries, one (`writer`) writes. An
    entry that records a failure is not a result: `in` does not count it."""

    def __init__(self, path: Path, writer: bool = True, entries: dict[str, dict[str, Any]] | None = None) -> None:
        self.path, self.writer = path, writer
        self.entries: dict[str, dict[str, Any]] = read_json(path) if entries is None else entries

    def __contains__(self, key: str) -> bool:
        return key in self.entries and not failed(self.entries[key])

    def on_disk(self) -> dict[str, dict[str, Any]]:
        """The entries every job has recorded so far (this one's view may be older)."""
        return read_json(self.path)

    def record(self, key: str, entry: dict[str, Any]) -> None:
        """Add `entry` here and on disk, merged with the entries other jobs wrote meanwhile."""
        self.entries[key] = entry
        if self.writer:
            with exclusive_lock(self.path.with_name(f".{self.path.name}.lock"), wait=True):
                merged = {**self.on_disk(), key: entry}
                write_text_atomic(self.path, json.dumps(merged, indent=2, sort_keys=True))

    def obtain(self, key: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The entry of `key`: recorded already, or `run()` now and recorded."""
        if key not in self:
            self.record(key, run())
        return self.entries[key]
