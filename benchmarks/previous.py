"""The figures of an earlier results file beside this run's: run_all's `--previous FILE`.

A results file is markdown: `## <section title>`, then a table. Rows of the two runs are paired
by their key columns (topology, size and variant; op and size; label), and each compared
column gets a neighbour named `<column> (<date of the earlier file>)`. A row the earlier file
does not have reads `-` there. The earlier figures were measured on another day and perhaps
another machine: only ratios measured within one run compare across files.
"""
from __future__ import annotations

import re
from pathlib import Path

#: section title -> (the columns that pair rows, the columns shown beside the earlier run's)
PAIRED = {
    "(a) QAT step / float step": (("topology", "size", "variant"), ("ms_per_step", "ratio_vs_float")),
    "(b) Evaluation throughput": (("topology", "size"), ("float_images_per_s", "lsq_wa_images_per_s",
                                                         "lsq_wa_over_float")),
    "(c) Fake quantization: ours vs PyTorch's fused ops": (("op", "size"), ("fwd_bwd_ours_over_torch",)),
    "(d) Horovod: 2 ranks vs 1, peak memory per rank": (("label",), ("images_per_s", "ratio")),
}


def tables(path: Path) -> tuple[str, dict[str, list[dict[str, str]]]]:
    """The date in a results file's heading, and each section's table as rows of text cells."""
    text = path.read_text()
    heading = re.search(r"^# Benchmarks, (\S+)", text, re.M)
    if heading is None:
        raise ValueError(f"{path}: not a run_all results file (no '# Benchmarks, <date>' heading)")
    found: dict[str, list[dict[str, str]]] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        if len(lines) < 2:
            continue
        columns = [c.strip() for c in lines[0].strip("|").split("|")]
        found[title.strip()] = [dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
                                for line in lines[2:]]
    return heading.group(1), found


def beside(title: str, rows: list[dict], columns: list[str] | None, earlier: tuple[str, dict] | None
           ) -> tuple[list[dict], list[str] | None]:
    """`rows` with the earlier run's figures of section `title` beside theirs, and the table's columns
    (None: from the rows' keys) with each new column after the one it repeats."""
    if earlier is None or title not in PAIRED:
        return rows, columns
    date, sections = earlier
    keys, compared = PAIRED[title]
    before = {tuple(r.get(k) for k in keys): r for r in sections.get(title, [])}
    out = []
    for row in rows:
        match = before.get(tuple(str(row.get(k)) for k in keys), {})
        added = {f"{c} ({date})": match.get(c) for c in compared}
        out.append({**row, **added})
    order = columns or list(dict.fromkeys(k for row in rows for k in row))
    merged = []
    for c in order:
        merged += [c, f"{c} ({date})"] if c in compared else [c]
    return out, merged
