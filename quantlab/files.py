"""Files that are never half-written and folders that one run owns at a time.

Every file quantlab writes goes through `write_atomic`: the bytes go to a temporary file
with a unique name in the target's folder, are flushed to disk, and the temporary file is
renamed over the target (atomic on POSIX), so a crash leaves the old file or the new one.
A stop signal waits until the file is written (quantlab.signals.held). A process killed
with SIGKILL mid-write leaves its temporary file behind: its name matches `TEMP_GLOB`, and
`remove_stale_temps` clears such files once the folder's lock is held.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from quantlab.signals import held

TEMP_SUFFIX = ".tmp"
TEMP_GLOB = f".*{TEMP_SUFFIX}"


def _temp_beside(path: Path) -> Path:
    """A new, unique, empty file next to `path` (unique across processes and hosts)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return Path(name)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace `path` by what `write(fh)` writes, atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with held():
        tmp = _temp_beside(path)
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode()))


def link_atomic(src: Path, dst: Path) -> None:
    """Make `dst` a hard link to `src`'s file, replacing any old `dst` atomically."""
    with held():
        tmp = _temp_beside(dst)
        try:
            tmp.unlink()
            os.link(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files interrupted writers left anywhere under `folder`; call
    only while holding the folder's lock, so no live writer's file is taken."""
    stale = [p for p in folder.rglob(TEMP_GLOB) if p.is_file()] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class Busy(Exception):
    """The lock is held by another process."""


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: bool, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing) for the `with` block, or
    with `shared` one that other shared holders may hold too (but no exclusive one).

    The kernel releases it when the process dies, however it dies, so a lock is never
    stale. `wait=False` raises `Busy` at once when another process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(str(path)) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
