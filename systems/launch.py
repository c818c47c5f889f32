"""Launch main.py on a compute system described by systems/<name>.yaml.

    .venv/bin/python systems/launch.py laptop -- --problem SwissCube --topology Widedepth
    .venv/bin/python systems/launch.py slurm --dry-run -- --problem SwissCube --topology Widedepth --profile paper

A profile's `launcher` is horovodrun (the default) or torchrun. On a Slurm allocation
(`hosts: slurm`) torchrun runs once per node under srun, the nodes meeting at torchrun's
c10d rendezvous on the allocation's first node.
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
#: keys a profile may leave out, with their defaults: `launcher` horovodrun | torchrun
#: (`controller`, mpi or gloo, is horovodrun's)
LAUNCH_KEYS = {"launcher": "horovodrun"}
LAUNCHERS = ("horovodrun", "torchrun")
#: the port of torchrun's rendezvous on the first node of an allocation
RENDEZVOUS_PORT = 29500
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
    optional = {**CAMPAIGN_KEYS, **LAUNCH_KEYS}
    if not KEYS <= set(system) <= KEYS | set(optional):
        sys.exit(f"{path}: expected keys {sorted(KEYS)} (and optionally {sorted(optional)}), found {sorted(system)}")
    if system.get("scheduler", "local") not in ("local", "slurm"):
        sys.exit(f"{path}: scheduler must be local or slurm, not {system['scheduler']!r}")
    if system.get("launcher", "horovodrun") not in LAUNCHERS:
        sys.exit(f"{path}: launcher must be horovodrun or torchrun, not {system['launcher']!r}")
    return {**optional, **system}


def slurm_nodes() -> tuple[list[str], int]:
    """The allocation's nodes and its ranks per node ($SLURM_NTASKS_PER_NODE)."""
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    return nodes, int(os.environ.get("SLURM_NTASKS_PER_NODE", "1"))


def slurm_hosts() -> tuple[str, int]:
    """`node1:k,node2:k` from the Slurm allocation, and the total number of ranks."""
    nodes, per_node = slurm_nodes()
    return ",".join(f"{n}:{per_node}" for n in nodes), per_node * len(nodes)


def torchrun_command(system: dict, main_args: list[str]) -> list[str]:
    """torchrun on this machine, or once per node of a Slurm allocation under srun."""
    torchrun = str(REPO / ".venv" / "bin" / "torchrun")
    if system["hosts"] == "slurm":
        nodes, per_node = slurm_nodes()
        if system["ranks"] and system["ranks"] % len(nodes):
            sys.exit(f"launcher torchrun: ranks {system['ranks']} do not split evenly over {len(nodes)} nodes")
        per_node = system["ranks"] // len(nodes) if system["ranks"] else per_node
        cmd = ["srun", f"--nodes={len(nodes)}", "--ntasks-per-node=1", torchrun, f"--nnodes={len(nodes)}",
               f"--nproc_per_node={per_node}", "--rdzv_backend=c10d",
               f"--rdzv_endpoint={nodes[0]}:{RENDEZVOUS_PORT}",
               f"--rdzv_id={os.environ.get('SLURM_JOB_ID', 'quantlab')}"]
    else:
        if "," in str(system["hosts"]):
            sys.exit("launcher torchrun: several hosts need a Slurm allocation (hosts: slurm), or torchrun started "
                     "on each host by hand (docs/clusters.md)")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={system['ranks']}"]
    return [*cmd, str(REPO / "main.py"), *main_args]


def command(system: dict, main_args: list[str]) -> list[str]:
    if system["launcher"] == "torchrun":
        cmd = torchrun_command(system, main_args)
        if system["threads_per_rank"]:
            cmd += ["--set", f"engine.threads={system['threads_per_rank']}"]
        return cmd
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
    # become the launcher (horovodrun, which becomes mpirun; torchrun; srun): a signal sent
    # to this process then reaches the launcher that stops every rank, instead of orphaning it
    os.execvpe(cmd[0], cmd, {**os.environ, **{k: str(v) for k, v in system["env"].items()}})


if __name__ == "__main__":
    main()
