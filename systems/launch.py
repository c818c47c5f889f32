"""Launch main.py on a compute system described by systems/<name>.yaml.

    .venv/bin/python systems/launch.py laptop -- --problem SwissCube --topology Widedepth
    .venv/bin/python systems/launch.py slurm --dry-run -- --problem SwissCube --topology Widedepth --profile paper
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KEYS = {"ranks", "hosts", "controller", "threads_per_rank", "env"}
#: how a campaign runs its jobs there (systems/campaign.py): `scheduler` local or slurm,
#: `jobs` at once (local) or workers per part (slurm), `gpus` a local machine shares out
#: among its jobs, `sbatch` options of every Slurm job
CAMPAIGN_KEYS = {"scheduler": "local", "jobs": 1, "gpus": 0, "sbatch": []}


def path_of(name: str) -> Path:
    """systems/<name>.yaml, or `name` itself when it is a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else HERE / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in HERE.glob("*.yaml")))
        sys.exit(f"{path}: no such system (available: {known})")
    return path.resolve()


def load(name: str) -> dict:
    path = path_of(name)
    system = yaml.safe_load(path.read_text())
    if not KEYS <= set(system) <= KEYS | set(CAMPAIGN_KEYS):
        sys.exit(f"{path}: expected keys {sorted(KEYS)} (and optionally {sorted(CAMPAIGN_KEYS)}), found {sorted(system)}")
    if system.get("scheduler", "local") not in ("local", "slurm"):
        sys.exit(f"{path}: scheduler must be local or slurm, not {system['scheduler']!r}")
    return {**CAMPAIGN_KEYS, **system}


def slurm_hosts() -> tuple[str, int]:
    """`node1:k,node2:k` from the Slurm allocation, and the total number of ranks."""
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
    return ",".join(f"{n}:{per_node}" for n in nodes), per_node * len(nodes)


def command(system: dict, main_args: list[str]) -> list[str]:
    hosts, ranks = system["hosts"], system["ranks"]
    if hosts == "slurm":
        hosts, total = slurm_hosts()
        ranks = ranks or total
    cmd = [str(REPO / ".venv" / "bin" / "horovodrun"), "-np", str(ranks), "-H", hosts, f"--{system['controller']}"]
    cmd += [str(REPO / ".venv" / "bin" / "python"), str(REPO / "main.py"), *main_args]
    if system["threads_per_rank"]:
        cmd += ["--set", f"engine.threads={system['threads_per_rank']}"]
    return cmd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system", help="a profile in systems/ (laptop, gpu_node, slurm, local) or a YAML file")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    system = load(args.system)
    cmd = command(system, argv[split + 1:])
    if args.dry_run:
        print(" ".join(cmd))
        return
    # become horovodrun (which becomes mpirun): a signal sent to this process then reaches
    # the launcher that stops every rank, instead of orphaning it
    os.execve(cmd[0], cmd, {**os.environ, **{k: str(v) for k, v in system["env"].items()}})


if __name__ == "__main__":
    main()
