"""A campaign as a graph of jobs: one per experiment, plus one per part of a search whose
children several jobs share (`--worker PART`), each after what it needs.

    float            (train)
    mqat:cube   x W  after float          (W workers: a job array on Slurm)
    mqat:bits   x W  after mqat:cube      (ended, whatever the outcome: see below)
    mqat:baselines   after float
    mqat             after every mqat:* part (ended): the join, which writes the tables

An experiment waits for the experiments it needs to succeed (`afterok`). Inside one, a
part and the join wait for earlier parts only to end (`afterany`): a worker that died
left its child unfinished but free, and the next job that needs it runs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from quantlab.campaign.spec import Campaign
from quantlab.modes import MODES, Child


@dataclass
class Job:
    name: str
    experiment: str
    mode: str
    part: str | None            # None: the experiment's own job (the join of its parts)
    workers: int = 1            # processes running it at once (a Slurm job array)
    after_ok: list[str] = field(default_factory=list)
    after_any: list[str] = field(default_factory=list)
    children: int = 0           # child runs of its part

    def main_args(self, exp_id: int) -> list[str]:
        args = ["--mode", self.mode, "--exp_id", str(exp_id)]
        return args + (["--worker", self.part] if self.part else [])


def build(campaign: Campaign, children: dict[str, list[Child]], most: int) -> list[Job]:
    """The jobs of `campaign` in an order that runs each after what it needs; `children`
    by experiment, `most` the workers a part may have at once (below 2: no fan-out)."""
    jobs: list[Job] = []
    for e in campaign.order():
        needs = e.needs()
        parts: dict[str, Job] = {}
        for part, before in MODES[e.mode].parts.items():
            count = sum(1 for c in children[e.name] if c.part == part)
            if most < 2 or count < 2:  # one child: the join runs it, no job of its own
                continue
            parts[part] = Job(f"{e.name}:{part}", e.name, e.mode, part, min(most, count), list(needs),
                              [parts[b].name for b in before if b in parts], count)
        jobs += parts.values()
        jobs.append(Job(e.name, e.name, e.mode, None, 1, list(needs), [j.name for j in parts.values()],
                        len(children[e.name])))
    return jobs


def draw(jobs: list[Job]) -> str:
    """The graph as text, one job a line."""
    lines = []
    for job in jobs:
        width = f" x{job.workers}" if job.workers > 1 else ""
        deps = [*job.after_ok, *(f"{a} (ended)" for a in job.after_any)]
        kids = f", {job.children} child runs" if MODES[job.mode].parts else ""
        lines.append(f"  {job.name + width:<28} --mode {job.mode}{' --worker ' + job.part if job.part else ''}"
                     f"{kids}{'   after ' + ', '.join(deps) if deps else ''}")
    return "\n".join(lines)
