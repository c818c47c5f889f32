"""A campaign's folder, `<logs>/campaigns/<name>/`: what was submitted and what ran.

    state.json            experiment ids ({name: expNNNN id}), what the campaign file said of each
                          when it was created ({name: spec}) and submitted jobs ({job: Slurm id})
    jobs/<job>.<i>.json   what process i of a job did: running, done or failed (and its exit code)
    jobs/<job>.<i>.lock   held (flock) by that process while it runs: the kernel drops it when it dies
    jobs/<job>.<i>.out    its output
    tables.md             the paper tables, by `collect`

A job is done when every one of its processes recorded success; the next `submit` starts
only jobs that are not done, so finished work is never run again (and a search's finished
children are kept by its ledger even inside an unfinished job).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from quantlab.engine.claims import held_elsewhere
from quantlab.files import exclusive_lock, write_text_atomic
from quantlab.records import read_json

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


def safe(name: str) -> str:
    """A job name as a file name (`mqat:cube` -> `mqat-cube`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


class CampaignState:
    def __init__(self, logs_root: Path, name: str) -> None:
        self.root = logs_root / "campaigns" / name
        self.jobs = self.root / "jobs"

    def read(self) -> dict[str, Any]:
        data = read_json(self.root / "state.json")
        return {"experiments": data.get("experiments", {}), "specs": data.get("specs", {}),
                "submitted": data.get("submitted", {})}

    def update(self, **changes: dict) -> dict[str, Any]:
        """Merge `changes` into state.json under its lock (two submits never lose a line)."""
        with exclusive_lock(self.root / ".state.lock", wait=True):
            data = self.read()
            for key, values in changes.items():
                data[key].update(values)
            write_text_atomic(self.root / "state.json", json.dumps(data, indent=2, sort_keys=True))
        return data

    def record_path(self, job: str, index: int) -> Path:
        return self.jobs / f"{safe(job)}.{index}.json"

    def lock_path(self, job: str, index: int) -> Path:
        return self.jobs / f"{safe(job)}.{index}.lock"

    def output_path(self, job: str, index: int | str) -> Path:
        return self.jobs / f"{safe(job)}.{index}.out"

    def process_state(self, job: str, index: int) -> str:
        """pending (never started), running (its lock is held), done, or failed (an exit
        code other than 0, or died without recording one)."""
        record = read_json(self.record_path(job, index))
        if not record:
            return PENDING
        if held_elsewhere(self.lock_path(job, index)):
            return RUNNING
        return DONE if record.get("state") == DONE else FAILED

    def job_state(self, job: str, workers: int) -> str:
        states = [self.process_state(job, i) for i in range(workers)]
        for state in (RUNNING, FAILED, PENDING):
            if state in states:
                return state if state != PENDING or len(set(states)) == 1 else RUNNING
        return DONE
