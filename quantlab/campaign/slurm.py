"""Submit a campaign's jobs to Slurm: one `sbatch` script per job (a job array for the
workers of a part), the graph's edges as Slurm dependencies. Slurm schedules; this
module only writes scripts, calls `sbatch` and reads `squeue`.

A job that is done is not submitted again; one still queued or running from an earlier
submit is kept (new jobs depend on it); anything else is submitted anew.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from quantlab.campaign.graph import Job
from quantlab.campaign.state import DONE, CampaignState, safe
from quantlab.errors import ConfigError, SchedulerError
from quantlab.files import write_text_atomic


def _slurm(args: list[str]) -> str:
    """A Slurm command's output; its failure is one line: the command's last word (Slurm
    prints its cause last, e.g. `squeue: fatal: Could not establish a configuration
    source` after three lines of how it looked)."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SchedulerError(f"{args[0]}: not found (a Slurm system needs Slurm's commands on this machine)") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{args[0]}: no answer from Slurm in 60 s") from None
    if out.returncode != 0:
        said = (out.stderr.strip() or out.stdout.strip()).splitlines()
        raise SchedulerError(f"Slurm's {args[0]} failed: {said[-1] if said else f'exit code {out.returncode}'} "
                             "(is the Slurm controller running, and this machine one of its clients?)")
    return out.stdout


def alive() -> dict[str, str]:
    """Slurm job id -> state (PENDING, RUNNING, ...) of this user's jobs in the queue; an
    array's tasks count under the array's id."""
    found: dict[str, str] = {}
    for line in _slurm(["squeue", "-h", "-r", "--me", "-o", "%F|%T"]).splitlines():
        job_id, state = line.strip().split("|")
        found[job_id] = "RUNNING" if "RUNNING" in (state, found.get(job_id)) else state
    return found


def options(job: Job, state: CampaignState) -> list[str]:
    """The job's own sbatch options, given on sbatch's command line (an argument each, never
    a line of the script): its name, which the campaign file's names make up and spec.load
    checked, and where its output goes."""
    output = state.output_path(job.name, "%a" if job.workers > 1 else 0)
    return [f"--job-name={state.root.name}:{job.name}", f"--output={output}"] + (
        [f"--array=0-{job.workers - 1}"] if job.workers > 1 else [])


def script(job: Job, state: CampaignState, command: list[str], sbatch: list[str], repo: Path) -> str:
    """The batch script of `job`: the system's `#SBATCH` options, then the job process
    around `command`, every word shell-quoted. An option holding a line break would end
    its `#SBATCH` line and start a shell command: refused."""
    for option in sbatch:
        if "\n" in option or "\r" in option or not option.strip():
            raise ConfigError(f"sbatch option {option!r} of the system file: one option a line, no line break")
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in sbatch)]
    lines += [f"cd {shlex.quote(str(repo))}",
              f"exec {shlex.quote(str(repo / '.venv' / 'bin' / 'python'))} -m quantlab.campaign.job "
              f"{shlex.quote(str(state.root))} {shlex.quote(job.name)} \"${{SLURM_ARRAY_TASK_ID:-0}}\" -- "
              + " ".join(shlex.quote(c) for c in command)]
    return "\n".join(lines) + "\n"


def submit(jobs: list[Job], state: CampaignState, command, sbatch: list[str], repo: Path, say) -> dict[str, str]:
    """Submit every job that is not done and not queued; return job name -> Slurm id."""
    queued = alive()
    submitted = state.read()["submitted"]
    ids: dict[str, str] = {}
    done = {j.name for j in jobs if state.job_state(j.name, j.workers) == DONE}
    for job in jobs:
        if job.name in done:
            continue
        previous = submitted.get(job.name)
        if previous in queued:
            ids[job.name] = previous
            say(f"{job.name}: still {queued[previous].lower()} as Slurm job {previous}")
            continue
        deps = [f"afterok:{ids[d]}" for d in job.after_ok if d not in done]
        deps += [f"afterany:{ids[d]}" for d in job.after_any if d not in done]
        path = state.jobs / f"{safe(job.name)}.sbatch"
        write_text_atomic(path, script(job, state, command(job), sbatch, repo))
        args = ["sbatch", "--parsable", *options(job, state), *([f"--dependency={','.join(deps)}"] if deps else []),
                str(path)]
        ids[job.name] = _slurm(args).strip().split(";")[0]
        say(f"{job.name}: Slurm job {ids[job.name]}" + (f" (array of {job.workers})" if job.workers > 1 else "")
            + (f", after {', '.join(deps)}" if deps else ""))
    state.update(submitted=ids)
    return ids
