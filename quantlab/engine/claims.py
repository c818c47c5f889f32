"""Child runs that several jobs work on in one experiment at once (a campaign's fan-out).

A search's children (MQAT's probes and candidates, the PTQ schemes, the Fisher runs) are
independent runs recorded in a ledger. To run one, a job's main rank takes an exclusive
`flock` on the child's claim file (`<ledger folder>/claims/<key>.lock`) and holds it until
the child is recorded. The kernel drops the lock when the process dies, however it dies
(SIGKILL, `scancel`, a lost node's NFS lease), so a claim is never stale: the next job
that asks for the child finds it free and resumes it from the child's last checkpoint.

A job asking for a child another job holds waits until that job records it (or dies, and
then runs it itself), unless it is a worker of the part the child belongs to (`--worker
PART`): a worker leaves busy children to their holders and goes on to the next one, then
stops after its part. A run without `--worker` does the whole search, as a single job.
Every decision is taken on the main rank and broadcast, so the ranks of a job agree.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from quantlab.engine import distributed as dist
from quantlab.engine.context import RunContext
from quantlab.errors import ConfigError, QuantlabError, TrainingError, shared
from quantlab.files import Busy, exclusive_lock
from quantlab.records import FAILED, Ledger, failed

#: seconds between two looks at a child another job holds
POLL_SECONDS = 2.0
#: the entry a worker gets for a child another job holds: its part's results are partial
PENDING: dict[str, Any] = {"metric": float("nan"), "pending": True}


def claim_path(ledger: Path, key: str) -> Path:
    """The claim file of `key` in `ledger`'s folder: readable, and unique per key."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return ledger.parent / "claims" / f"{ledger.stem}.{re.sub(r'[^A-Za-z0-9=.,-]+', '_', key)[:80]}.{digest}.lock"


def held_elsewhere(path: Path) -> bool:
    """Whether a live process holds the claim `path` (a status check: takes nothing)."""
    if not path.is_file():
        return False
    try:
        with exclusive_lock(path, wait=False):
            return False
    except Busy:
        return True


class Jobs:
    """The claims of one run: which part it works on (`--worker`) and how many children of
    that part it left to other jobs."""

    def __init__(self, ctx: RunContext, mode: str, parts: tuple[str, ...]) -> None:
        self.ctx = ctx
        self.worker: str | None = ctx.options.get("worker")
        if self.worker is not None and self.worker not in parts:
            raise ConfigError(f"--worker {self.worker}: the parts of --mode {mode} are {', '.join(parts) or 'none'}")
        self.current: str | None = None
        self.pending = 0
        #: (key, error) of the children that raised in this job, by part
        self.failures: dict[str, list[tuple[str, str]]] = {}
        self._held: dict[str, contextlib.ExitStack] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Children asked for inside the block belong to the part `name`. A child that
        raises is recorded as failed and the part goes on with the others; at its end,
        the part's failures are one error naming each, which ends the job."""
        self.current, before = name, self.current
        try:
            yield
        finally:
            self.current = before
        failures = self.failures.pop(name, [])
        if failures:
            listed = "; ".join(f"'{key}': {message}" for key, message in failures)
            raise shared(TrainingError(
                f"{len(failures)} child run(s) of part '{name}' failed ({listed}); the others ran. Continue "
                f"experiment {self.ctx.logbook.exp_id} (--exp_id) to run the failed ones again"))

    def stops_after(self, name: str) -> bool:
        """Whether this job is a worker of `name` (and so ends once that part is done)."""
        return self.worker == name

    def ledger(self, path: Path) -> "Claimed":
        """The ledger at `path`, read on the main rank and given to every rank."""
        entries = dist.on_main(self.ctx.world, f"ledger.{path.name}", lambda: Ledger(path).entries)
        return Claimed(self, Ledger(path, writer=self.ctx.world.is_main, entries=entries))

    def _recorded(self, entry: dict | None) -> str | None:
        """What a recorded entry means for this job: 'done', 'failed' (a worker leaves a
        child another job saw fail to the join), or None (run it: not recorded, or failed
        and this job is not a worker, so it tries again)."""
        if entry is None:
            return None
        if not failed(entry):
            return "done"
        return "failed" if self.worker is not None else None

    def _decide(self, ledger: Ledger, key: str) -> tuple[str, dict | None]:
        """On the main rank: ('done' or 'failed', entry), ('run', None) holding the claim,
        or ('busy', None) when another job holds it."""
        entry = ledger.on_disk().get(key)
        if self._recorded(entry):
            return self._recorded(entry), entry
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(exclusive_lock(claim_path(ledger.path, key), wait=False))
        except Busy:
            stack.close()
            return "busy", None
        entry = ledger.on_disk().get(key)  # recorded between the first look and the claim
        if self._recorded(entry):
            stack.close()
            return self._recorded(entry), entry
        self._held[key] = stack
        return "run", None

    def _obtain(self, ledger: Ledger, key: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Claimed.obtain: the entry of `key`: recorded already (by any job), or run here under its claim;
        None for a worker when another job holds it or saw it fail, and None for a child
        that failed here (recorded, and reported at the end of its part)."""
        if key in ledger:
            return ledger.entries[key]
        told = False
        while True:
            verdict, entry = dist.on_main(self.ctx.world, "claim", lambda: self._decide(ledger, key))
            if verdict == "done":
                ledger.entries[key] = entry
                return entry
            if verdict == "failed":
                self.ctx.say(f"'{key}' failed in another job ({entry[FAILED]}): left to the experiment's own job")
                self.pending += 1
                return None
            if verdict == "run":
                try:
                    return self._run(ledger, key, run)
                finally:
                    self._held.pop(key, contextlib.ExitStack()).close()
            if self.worker is not None and self.worker == self.current:
                self.pending += 1
                return None
            if not told:
                self.ctx.say(f"waiting for '{key}': another job runs it ({claim_path(ledger.path, key).name})")
                told = True
            time.sleep(POLL_SECONDS)

    def _run(self, ledger: Ledger, key: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run the claimed child and record its entry, or record that it failed and with
        what. Inside a part the part goes on (None); outside one, or when the error is one
        rank's own (the ranks no longer run in step), the error ends the job."""
        try:
            entry = run()
        except Exception as exc:
            if dist.peer_failed(exc):
                raise  # another rank failed or left: not this child's doing
            message = " ".join(str(exc).split()) or type(exc).__name__
            if not isinstance(exc, QuantlabError):
                message = f"{type(exc).__name__}: {message}"
            ledger.record(key, {FAILED: message, "metric": float("nan")})
            alike = self.ctx.world.size == 1 or getattr(exc, "shared", False)
            if self.current is None or not alike:
                raise
            self.ctx.say(f"child run '{key}' failed: {message}; part '{self.current}' goes on with the others")
            self.failures.setdefault(self.current, []).append((key, message))
            return None
        ledger.record(key, entry)
        return ledger.entries[key]


class Claimed:
    """A ledger whose children are claimed through `jobs`: the one way a search gets a
    child's result (`obtain`, as Ledger.obtain for a single job), and the part a group of
    children belongs to (`part`, `pending`)."""

    def __init__(self, jobs: Jobs, ledger: Ledger) -> None:
        self.jobs, self.inner = jobs, ledger

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        return self.inner.entries

    def __contains__(self, key: str) -> bool:
        return key in self.inner

    def obtain(self, key: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """The entry of `key`: recorded already (by any job), or run here under its claim;
        None for a worker when another job holds it or saw it fail."""
        return self.jobs._obtain(self.inner, key, run)

    def part(self, name: str) -> contextlib.AbstractContextManager:
        """The children obtained within belong to part `name` (Jobs.part)."""
        return self.jobs.part(name)

    @property
    def pending(self) -> int:
        """Children this job left to other jobs: the part's records are partial."""
        return self.jobs.pending
