"""SIGTERM and SIGINT as an exception raised at a safe point.

A scheduler, `timeout`, Ctrl-C or the launcher ending a job sends SIGTERM or SIGINT.
Python's default would end the process at once (SIGTERM) or raise KeyboardInterrupt
anywhere. Here both raise `Stopped`, so `finally` blocks run. Inside `held()`, for
example while a file is written, the signal waits until the block ends, so a write is
finished and never broken off halfway.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_held = 0
_pending: int | None = None


class Stopped(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt, so that
    `except Exception` lets it pass."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, _frame) -> None:
    global _pending
    if _held:
        _pending = signum
        return
    raise Stopped(signum)


def stop_on_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_signal)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold a stop signal until the block ends, then raise it. Signal handlers run in the
    main thread, so only the main thread's blocks hold."""
    global _held, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending is not None:
            signum, _pending = _pending, None
            raise Stopped(signum)
