"""How a rank process ends: a failure or a stop is reported in one line, once.

Under a launcher every rank runs this code. An error every rank raises alike (a config
value, a verdict broadcast from rank 0) is printed by rank 0 alone; a rank stopped because
another rank failed says so in one line instead of Horovod's traceback; a stop signal
(quantlab.signals) is reported as such, even when it broke into a library call that then
raised an error of its own.
"""
from __future__ import annotations

import os
import sys
import traceback

from quantlab.engine.distributed import peer_failed
from quantlab.errors import QuantlabError
from quantlab.progress import line
from quantlab.signals import Stopped

#: environment variables in which launchers give a process its rank (Horovod's Gloo
#: launcher, Open MPI, MPICH and Intel MPI, torchrun), read before the backend starts
RANK_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "RANK")


def _stop_in(exc: BaseException | None) -> Stopped | None:
    """The Stopped that `exc` is, or that its chain of causes holds."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Stopped):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def launcher_rank() -> int:
    """This process's rank as its launcher set it (0 without a launcher)."""
    return next((int(os.environ[v]) for v in RANK_VARIABLES if os.environ.get(v, "").isdigit()), 0)


def report(exc: BaseException, rank: int | None) -> int:
    """Print what ended the run (at most one line, except for a bug's traceback) and
    return the exit code. `rank` is None before Horovod started: every rank then failed
    alike, on the same files and arguments, and only the launcher's rank 0 prints."""
    speaks = rank == 0 if rank is not None else launcher_rank() == 0
    shown = rank if rank is not None else launcher_rank()
    stop = _stop_in(exc)
    if stop is not None:
        if speaks:
            line(f"stopped by {stop} (rank {shown})", sys.stderr)
        return 128 + stop.signum
    if peer_failed(exc):
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else "the backend shut down"
        line(f"rank {shown} stopped: {first} (another rank failed or left; its error is its own line)", sys.stderr)
    elif isinstance(exc, QuantlabError):
        if speaks or (rank is not None and not exc.shared):
            line(f"error (rank {shown}): {exc}", sys.stderr)
    elif speaks or rank is not None:
        line(f"error (rank {shown}):\n{''.join(traceback.format_exception(exc))}", sys.stderr)
    return 1
