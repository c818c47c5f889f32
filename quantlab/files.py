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
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from quantlab.errors import ConfigError, ExperimentError
from quantlab.signals import held

TEMP_SUFFIX = ".tmp"
TEMP_GLOB = f".*{TEMP_SUFFIX}"
#: what a name that becomes a folder, a file or a scheduler's job name may hold: a letter or
#: digit first (so never `.` or `..`), then letters, digits, `_`, `.` and `-`; no `/`, no
#: whitespace, no control character
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def checked_name(value: object, what: str) -> str:
    """`value` as a name that is safe in a path or a script, or a ConfigError naming `what`."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ConfigError(f"{what}: {value!r} is not a valid name (a letter or digit, then up to 63 letters, "
                          "digits, '_', '.' or '-'; it becomes a folder or a job name)")
    return value


def _temp_beside(path: Path) -> Path:
    """A new, unique, empty file next to `path` (unique across processes and hosts)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return Path(name)


class _Recorded:
    """A file whose write errors are kept: torch.save writes through a C++ writer that
    turns the OSError of a full disk into "unexpected pos ...", losing what went wrong."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str):
        return getattr(self.fh, name)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace `path` by what `write(fh)` writes, atomically and durably. A write the
    system refuses (a full disk, a quota, a file size limit) is one error naming the file
    and the system's reason; the previous file stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with held():
        tmp = _temp_beside(path)
        recorded = None
        try:
            with open(tmp, "wb") as raw:
                recorded = _Recorded(raw)
                write(recorded)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, path)
        except Exception as exc:
            cause = recorded.error if recorded is not None and recorded.error else exc
            if isinstance(cause, OSError):
                raise ExperimentError(f"{path}: cannot be written ({cause.strerror or cause}); the previous "
                                      "version, if any, is kept") from None
            raise
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
