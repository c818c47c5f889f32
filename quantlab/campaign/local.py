"""Run a campaign's jobs on this machine: up to `slots` processes at once, each a job
process (quantlab.campaign.job) around its launch command, in the order of the graph.

A job starts when the jobs it needs succeeded (`after_ok`) and the ones it follows ended
(`after_any`); a job whose `after_ok` failed is not started (the next submit retries
both). Slot i of n gets its share of the machine: `env_for(i)` (its GPUs, its threads).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from quantlab.campaign.graph import Job
from quantlab.campaign.state import DONE, FAILED, CampaignState
from quantlab.signals import Stopped

POLL_SECONDS = 0.5


#: seconds the running jobs get to save and stop after the submit was stopped, before SIGKILL
STOP_GRACE_SECONDS = 120.0


def run_local(jobs: list[Job], state: CampaignState, command: Callable[[Job], list[str]], slots: int,
              env_for: Callable[[int], dict[str, str]], say: Callable[[str], None]) -> dict[str, str]:
    """Run every job that is not done; return each job's final state. A stop signal to the
    submit (quantlab.signals) is passed on to every running job, whose runs save what they
    have and stop; the submit waits for them, then stops too, so nothing runs on with
    nobody to start what follows."""
    running: dict[tuple[str, int], tuple[subprocess.Popen, int]] = {}
    try:
        return _run(jobs, state, command, slots, env_for, say, running)
    except Stopped as stop:
        procs = [proc for proc, _ in running.values() if proc.poll() is None]
        for proc in procs:
            proc.send_signal(stop.signum)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        say(f"stopped by {stop}: {len(procs)} running job process(es) stopped; submit again to resume")
        raise


def _run(jobs: list[Job], state: CampaignState, command: Callable[[Job], list[str]], slots: int,
         env_for: Callable[[int], dict[str, str]], say: Callable[[str], None],
         running: dict[tuple[str, int], tuple[subprocess.Popen, int]]) -> dict[str, str]:
    final = {j.name: DONE for j in jobs if state.job_state(j.name, j.workers) == DONE}
    waiting = [j for j in jobs if j.name not in final]
    left: dict[str, list[int]] = {j.name: list(range(j.workers)) for j in waiting}
    codes: dict[str, list[int]] = {j.name: [] for j in waiting}
    state.jobs.mkdir(parents=True, exist_ok=True)
    while waiting or running:
        for (name, index), (proc, slot) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[(name, index)]
            codes[name].append(proc.returncode)
            job = next(j for j in jobs if j.name == name)
            if len(codes[name]) == job.workers:
                final[name] = DONE if all(c == 0 for c in codes[name]) else FAILED
                say(f"{name}: {final[name]}" + ("" if final[name] == DONE else
                                                 f" (see {state.output_path(name, '*')})"))
        for job in list(waiting):
            if any(final.get(d) == FAILED for d in job.after_ok):
                final[job.name] = "not started"
                waiting.remove(job)
                say(f"{job.name}: not started ({', '.join(job.after_ok)} failed)")
                continue
            if not all(final.get(d) == DONE for d in job.after_ok) or not all(d in final for d in job.after_any):
                continue
            while left[job.name]:
                free = sorted(set(range(slots)) - {slot for _, slot in running.values()})
                if not free:
                    break
                index = left[job.name].pop(0)
                out = open(state.output_path(job.name, index), "w")
                proc = subprocess.Popen([sys.executable, "-m", "quantlab.campaign.job", str(state.root), job.name,
                                         str(index), "--", *command(job)], stdout=out, stderr=subprocess.STDOUT,
                                        env=env_for(free[0]), cwd=Path(__file__).resolve().parents[2])
                out.close()
                running[(job.name, index)] = (proc, free[0])
                say(f"{job.name}{f' [{index + 1}/{job.workers}]' if job.workers > 1 else ''}: started")
            if not left[job.name]:
                waiting.remove(job)
        time.sleep(POLL_SECONDS)
    return final
