"""Reproduce a paper's tables on a compute system: one campaign file, five commands.

    .venv/bin/python systems/campaign.py plan    mqat_swisscube [--system slurm]
    .venv/bin/python systems/campaign.py measure mqat_swisscube --system slurm
    .venv/bin/python systems/campaign.py submit  mqat_swisscube --system slurm
    .venv/bin/python systems/campaign.py status  mqat_swisscube
    .venv/bin/python systems/campaign.py collect mqat_swisscube

A campaign is a file in systems/campaigns/ (or any path). `plan` prints its job graph and
the device-hours of each table from the timings `measure` took on the system (a short
timing run: run it where the jobs run, e.g. inside `srun`). `submit` runs what is not
finished: on a `local` system up to `jobs` at once, on `slurm` as sbatch jobs with Slurm
dependencies. `status` shows jobs and child runs; `collect` writes the tables.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from main import storage_roots  # noqa: E402  (the repository on the path first)
from quantlab.campaign import graph, local, slurm  # noqa: E402
from quantlab.campaign.estimate import Timing, experiment_children, experiment_hours, table_hours  # noqa: E402
from quantlab.campaign.spec import Campaign, load  # noqa: E402
from quantlab.campaign.state import DONE, CampaignState  # noqa: E402
from quantlab.engine.claims import claim_path, held_elsewhere  # noqa: E402
from quantlab.engine.config import build_config  # noqa: E402
from quantlab.engine.logbook import Logbook  # noqa: E402
from quantlab.errors import ConfigError, QuantlabError, SchedulerError  # noqa: E402
from quantlab.files import Busy, exclusive_lock, write_text_atomic  # noqa: E402
from quantlab.modes import config_files  # noqa: E402
from quantlab.records import FAILED, failed, read_json  # noqa: E402
from quantlab.signals import Stopped, stop_on_signals  # noqa: E402
from systems import launch  # noqa: E402

CAMPAIGNS = HERE / "campaigns"


def campaign_path(name: str) -> Path:
    path = Path(name) if name.endswith((".yaml", ".yml")) else CAMPAIGNS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CAMPAIGNS.glob("*.yaml")))
        raise ConfigError(f"{path}: no such campaign (available: {known})")
    return path


class Session:
    """A campaign with what every command needs: its tasks, child runs, jobs, folders."""

    def __init__(self, name: str, system: str) -> None:
        self.campaign: Campaign = load(campaign_path(name), REPO)
        self.system_name, self.system_path = Path(system).stem, launch.path_of(system)
        self.system = launch.load(system)
        self.data_root, self.logs_root = storage_roots()
        module = importlib.import_module(f"problems.{self.campaign.problem}.{self.campaign.topology}")
        self.tasks = {n: module.build_task(e.cfg, self.data_root) for n, e in self.campaign.experiments.items()}
        self.children = {n: experiment_children(e.mode, e.cfg, self.tasks[n])
                         for n, e in self.campaign.experiments.items()}
        self.jobs = graph.build(self.campaign, self.children, self.system["jobs"])
        self.state = CampaignState(self.logs_root, self.campaign.name)

    @property
    def where(self) -> str:
        return f"{self.campaign.problem}/{self.campaign.topology}"

    def timing_key(self, experiment: str) -> str:
        return f"{self.where}@{self.campaign.experiments[experiment].profile}"

    @property
    def timings_file(self) -> Path:
        return self.logs_root / "campaigns" / "timings" / f"{self.system_name}.json"

    def timings(self) -> dict[str, Timing] | None:
        saved = read_json(self.timings_file)
        if not all(self.timing_key(n) in saved for n in self.campaign.experiments):
            return None
        return {n: Timing(**saved[self.timing_key(n)]) for n in self.campaign.experiments}

    def exp_folder(self, experiment: str, exp_id: int) -> Path:
        return Logbook(self.logs_root, self.campaign.problem, self.campaign.topology, exp_id, writer=False).root


def plan(s: Session) -> None:
    c = s.campaign
    print(f"campaign {c.name} ({c.path.name}): {s.where}, {len(c.experiments)} experiments, {len(s.jobs)} jobs "
          f"on system {s.system_name} ({s.system['scheduler']}, up to {s.system['jobs']} at once)")
    print(graph.draw(s.jobs))
    timings = s.timings()
    if timings is None:
        print(f"\nno timings of {s.where} on {s.system_name} yet ({s.timings_file}): run "
              f"`systems/campaign.py measure {c.path.stem} --system {s.system_name}` where its jobs run")
        return
    device = next(iter(timings.values())).device
    print(f"\nestimate: device-hours on {device} (timings {s.timings_file}; {c.images['train']} training and "
          f"{c.images['eval']} evaluation images per epoch and per evaluation)")
    for name, e in c.experiments.items():
        parts = sorted({ch.part for ch in s.children[name] if ch.part})
        split = ", ".join(f"{p} {experiment_hours(s.children[name], timings[name], c.images, [p]):.1f}"
                          for p in parts)
        print(f"  {name:<12} {experiment_hours(s.children[name], timings[name], c.images):9.1f} h"
              + (f"   ({split})" if split else ""))
    total = sum(experiment_hours(s.children[n], timings[n], c.images) for n in c.experiments)
    print(f"  {'campaign':<12} {total:9.1f} h")
    for table, hours in table_hours(c, s.children, timings).items():
        print(f"  table {table:<24} {hours:9.1f} h")


def measure(s: Session, steps: int) -> None:
    import torch

    from quantlab.campaign.timing import measure as timed
    saved = read_json(s.timings_file)
    with tempfile.TemporaryDirectory() as tmp:
        for profile in sorted({e.profile for e in s.campaign.experiments.values()}):
            cfg = build_config(config_files(), s.campaign.topology_file, profile,
                               [f"data.root={Path(tmp) / 'timing'}", *s.campaign.timing])
            device = torch.device("cuda" if cfg["engine"]["device"] != "cpu" and torch.cuda.is_available() else "cpu")
            module = importlib.import_module(f"problems.{s.campaign.problem}.{s.campaign.topology}")
            timing = timed(module.build_task(cfg, Path(tmp)), cfg, device, steps)
            saved[f"{s.where}@{profile}"] = dataclasses.asdict(timing)
            print(f"{s.where}@{profile} on {timing.device}: {1000 * timing.train_float:.1f} ms per float training "
                  f"image, {1000 * timing.train_quant:.1f} ms quantized, {1000 * timing.eval:.1f} ms per evaluation")
    write_text_atomic(s.timings_file, json.dumps(saved, indent=2, sort_keys=True))
    print(f"timings written to {s.timings_file}")


def prepare(s: Session) -> dict[str, int]:
    """Each experiment's id: created with its resolved config.yaml on the first submit. An
    experiment's configuration is fixed then; a campaign file edited since (its mode,
    profile, start, after or overrides) is refused, naming what changed, before anything
    runs: the jobs would continue the old configuration and the edit would be ignored."""
    recorded = s.state.read()
    ids, specs = recorded["experiments"], recorded["specs"]
    c = s.campaign
    for e in c.order():
        if e.name in ids and (s.exp_folder(e.name, ids[e.name]) / "config.yaml").is_file():
            if e.name not in specs:  # created by a submit that recorded no spec: today's is taken as it
                s.state.update(specs={e.name: e.spec()})
                continue
            changed = e.changes(specs[e.name])
            if changed:
                raise ConfigError(f"{c.path}: experiment '{e.name}' (exp{ids[e.name]:04d}) was created by an earlier "
                                  f"submit, and the file has changed it since: {'; '.join(changed)}. Undo the change "
                                  "to continue it, or give the experiment a new name to start a new one")
            continue
        exp_id = Logbook.claim(s.logs_root, c.problem, c.topology)
        cfg = copy.deepcopy(e.cfg)
        if e.start:
            cfg["quantize"]["init"] = ids[e.start]
        Logbook(s.logs_root, c.problem, c.topology, exp_id, writer=True).create(cfg)
        ids[e.name] = exp_id
        s.state.update(experiments={e.name: exp_id}, specs={e.name: e.spec()})
    return ids


def submit(s: Session) -> int:
    if s.system["scheduler"] == "slurm":
        slurm.alive()  # Slurm answers, before any experiment is created
    s.state.root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(s.state.root / ".submit.lock", wait=False))
        except Busy:
            raise ConfigError(f"{s.state.root / '.submit.lock'}: another submit of {s.campaign.name} is running") from None
        ids = prepare(s)
        python = str(REPO / ".venv" / "bin" / "python")

        def command(job: graph.Job) -> list[str]:
            return [python, str(HERE / "launch.py"), str(s.system_path), "--", "--problem",
                    s.campaign.problem, "--topology", s.campaign.topology, *job.main_args(ids[job.experiment])]
        if s.system["scheduler"] == "slurm":
            slurm.submit(s.jobs, s.state, command, list(s.system["sbatch"]), REPO, print)
            return 0
        final = local.run_local(s.jobs, s.state, command, s.system["jobs"], lambda slot: slot_env(s.system, slot),
                                print)
    failed = [n for n, v in final.items() if v != DONE]
    print(f"campaign {s.campaign.name}: " + (f"not finished ({', '.join(failed)}); submit again to resume"
                                            if failed else "every job done; `collect` writes the tables"))
    return 1 if failed else 0


def slot_env(system: dict, slot: int) -> dict[str, str]:
    """The environment of local job slot `slot`: its own GPUs when the machine has some."""
    env = dict(os.environ)
    if system["gpus"]:
        per = max(1, system["gpus"] // system["jobs"])
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot * per + i) for i in range(per))
    return env


def last_metric(s: Session, experiment: str, folder: Path) -> str:
    files = sorted(folder.rglob("metrics.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return "-"
    name = s.tasks[experiment].best_metric
    value = read_json(files[-1]).get(name)
    return f"{name} {value:.2f} ({files[-1].parent.relative_to(folder)})" if isinstance(value, float) else "-"


def children_status(folder: Path) -> str:
    """Finished, failed, running and interrupted child runs of a search: each has a claim
    file (engine.claims) beside its ledger, held while it runs; a failed one is recorded in
    the ledger with its error."""
    done, failures, running, interrupted = 0, [], [], []
    for claim in sorted(folder.glob("*/claims/*.lock")):
        stem, readable = claim.name.split(".", 1)
        ledger = claim.parent.parent / f"{stem}.json"
        entries = {claim_path(ledger, key).name: (key, entry) for key, entry in read_json(ledger).items()}
        if claim.name in entries and not held_elsewhere(claim):
            key, entry = entries[claim.name]
            if failed(entry):
                failures.append(f"{key} ({entry[FAILED]})")
            else:
                done += 1
        else:
            (running if held_elsewhere(claim) else interrupted).append(readable.rsplit(".", 2)[0])
    text = f"{done} children done"
    if failures:
        text += f", failed (the experiment's next run retries them): {'; '.join(failures)}"
    if running:
        text += f", running: {', '.join(running)}"
    if interrupted:
        text += f", interrupted (the next job that needs them resumes them): {', '.join(interrupted)}"
    return text


def status(s: Session) -> None:
    ids = s.state.read()
    queued, unknown = {}, None
    if s.system["scheduler"] == "slurm":
        try:
            queued = slurm.alive()
        except SchedulerError as exc:
            unknown = exc
    print(f"campaign {s.campaign.name} ({s.state.root})")
    if unknown is not None:
        print(f"  note: {unknown}; the states below come from the job records alone (queued jobs show as pending)")
    for job in s.jobs:
        state = s.state.job_state(job.name, job.workers)
        slurm_id = ids["submitted"].get(job.name)
        if state != DONE and slurm_id in queued:
            state = queued[slurm_id].lower()
        exp_id = ids["experiments"].get(job.experiment)
        folder = s.exp_folder(job.experiment, exp_id) if exp_id is not None else None
        where = str(folder.relative_to(s.logs_root)) if folder else "(not submitted)"
        line = f"  {job.name:<20} {state:<9} {where}"
        if folder is not None and job.part is None:
            line += f"   {last_metric(s, job.experiment, folder)}"
            if job.children > 1:
                line += f"\n  {'':<20} {children_status(folder)} of {job.children} planned"
        print(line)


def collect(s: Session) -> int:
    """Each paper table built from its experiment's records (`--mode table`), into
    `tables.md` of the campaign folder."""
    ids = s.state.read()["experiments"]
    sections, missing = [], []
    for table in s.campaign.tables:
        exp_id = ids.get(table.experiment)
        out = None if exp_id is None else subprocess.run(
            [sys.executable, str(REPO / "main.py"), "--problem", s.campaign.problem, "--topology",
             s.campaign.topology, "--mode", "table", "--exp_id", str(exp_id), "--table", table.table],
            capture_output=True, text=True)
        path = s.exp_folder(table.experiment, exp_id) / "tables" / f"{table.table}.md" if exp_id is not None else None
        if out is None or out.returncode != 0 or not path.is_file():
            missing.append(table.name)
            continue
        sections.append(f"## {table.name}\n\n{path.read_text().strip()}\n")
    text = f"# {s.campaign.name}\n\n" + "\n".join(sections)
    write_text_atomic(s.state.root / "tables.md", text)
    print(text)
    print(f"tables written to {s.state.root / 'tables.md'}"
          + (f"; not ready yet: {', '.join(missing)}" if missing else ""))
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["plan", "measure", "submit", "status", "collect"])
    p.add_argument("campaign", help="a file in systems/campaigns/ (by name) or a campaign YAML file")
    p.add_argument("--system", default="local", help="a profile in systems/ or a YAML file (default: local)")
    p.add_argument("--steps", type=int, default=5, help="measure: timed steps per variant")
    args = p.parse_args(argv)
    stop_on_signals()
    try:
        session = Session(args.campaign, args.system)
        if args.command == "plan":
            plan(session)
        elif args.command == "measure":
            measure(session, args.steps)
        elif args.command == "submit":
            return submit(session)
        elif args.command == "status":
            status(session)
        else:
            return collect(session)
    except QuantlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Stopped as stop:
        print(f"stopped by {stop}", file=sys.stderr)
        return 128 + stop.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
