"""Progress that reads well both at a terminal and in a log file.

At a terminal, tqdm's live bar. Elsewhere (under horovodrun, whose launcher pipes every
rank's output; in a batch job writing to a file) each bar refresh would become a new
line, megabytes of them per job, so progress is instead one short line every `INTERVAL`
seconds; the caller prints its own line per epoch.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: seconds between progress lines when the output is not a terminal (engine.progress_interval)
INTERVAL = 30.0


def line(text: str, stream: TextIO | None = None) -> None:
    """`text` and its newline in one write, flushed. Horovod runs ranks unbuffered
    (PYTHONUNBUFFERED=1), where print() writes the text and the newline separately, and
    mpirun then tags the lone newline as a line of its own: a stray `[1,0]<stdout>:` at
    the end of the line."""
    stream = sys.stdout if stream is None else stream
    stream.write(text + "\n")
    stream.flush()


def configure(interval: float) -> None:
    global INTERVAL
    INTERVAL = interval


class Lines:
    """An iterable that reports `desc: n/total (p%), r it/s, <postfix>` at an interval."""

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None, enabled: bool) -> None:
        self.iterable, self.desc, self.enabled = iterable, desc, enabled
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._count = 0

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, count: int = 1) -> None:
        self._count += count
        self._maybe_report()

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[T]:
        self._start = self._last = time.monotonic()
        self._count = 0
        for item in self.iterable:
            yield item
            self.update()

    def _maybe_report(self) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < INTERVAL:
            return
        self._last = now
        done = f"{self._count}/{self.total} ({100 * self._count / self.total:.0f}%)" if self.total else str(self._count)
        rate = self._count / max(now - self._start, 1e-9)
        line(f"{self.desc}: {done}, {rate:.1f} it/s" + (f", {self.postfix}" if self.postfix else ""), sys.stderr)


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None,
             enabled: bool = True) -> Iterable[T]:
    """A live bar at a terminal, interval lines otherwise; `enabled=False` is silent (the
    ranks other than 0). Without `iterable`, count with `update()` and end with `close()`."""
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True,
                    mininterval=1.0)
    return Lines(iterable if iterable is not None else (), desc, total, enabled)
