"""The record of finished candidate runs of a search, kept in the parent experiment.

Each candidate (module bits + flow) is keyed canonically; a finished run's result is
written atomically, so an interrupted search resumes without re-running finished ones.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from quantlab.files import write_text_atomic


def candidate_key(bits: dict[str, int], order: list[str] | None, algorithm: str | None = None) -> str:
    """E.g. 'backbone=32,fpn=2,head=32|fpn>head>backbone' (order part empty when unordered);
    runs with another algorithm than MQAT's own (the uniform baselines) are prefixed 'lsq:'."""
    part = ",".join(f"{m}={bits[m]}" for m in sorted(bits))
    return f"{algorithm + ':' if algorithm else ''}{part}|{'>'.join(order or [])}"


class Ledger:
    def __init__(self, path: Path, writer: bool = True) -> None:
        self.path, self.writer = path, writer  # every rank keeps the entries, one writes
        self.entries: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def record(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = entry
        if self.writer:
            write_text_atomic(self.path, json.dumps(self.entries, indent=2, sort_keys=True))

    def cached(self, run: Callable[[dict[str, int], list[str] | None], dict[str, Any]],
               algorithm: str | None = None) -> Callable[[dict[str, int], list[str] | None], dict[str, Any]]:
        """`run` that answers finished candidates from the ledger and records new ones."""
        def wrapped(bits: dict[str, int], order: list[str] | None) -> dict[str, Any]:
            key = candidate_key(bits, order, algorithm)
            if key not in self.entries:
                self.record(key, {"bits": bits, "order": order, **run(bits, order)})
            return self.entries[key]
        return wrapped
