"""A real single-node Slurm on this machine: to try a campaign's Slurm path without a
cluster (the test suite's Slurm test uses it).

    .venv/bin/python systems/local_slurm.py start FOLDER   # prints: export SLURM_CONF=...
    .venv/bin/python systems/local_slurm.py stop FOLDER

Debian's `slurm-wlm` and `munge` (setup.sh installs them): one `munged` with its own key
and socket, one `slurmctld` and one `slurmd` on free local ports, all state, logs and the
generated `slurm.conf` under FOLDER. The node offers this machine's cores and memory, no
GPUs; jobs run as the user who started it (SlurmUser), which must be able to start slurmd
(root, or a user with the rights a container gives).
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot start here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(folder: Path, node: str) -> str:
    cores = os.cpu_count() or 1
    memory = max(1024, (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2**20 - 1024)
    user = getpass.getuser()
    return f"""ClusterName=quantlab-local
SlurmctldHost={node}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={folder / 'munge.sock'}
CredType=cred/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'slurmctld.log'}
SlurmdLogFile={folder / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cores} RealMemory={memory} State=UNKNOWN
PartitionName=local Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def start(folder: Path, timeout: float = 30.0) -> dict[str, str]:
    """Start munged, slurmctld and slurmd under `folder`; return the environment that
    points Slurm's commands at them (SLURM_CONF)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").is_file()]
    if missing:
        raise SlurmUnavailable(f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)")
    folder = folder.resolve()
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "munge").chmod(0o700)
    key = folder / "munge" / "munge.key"
    if not key.is_file():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, node))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    sbin = lambda d: shutil.which(d) or f"/usr/sbin/{d}"  # noqa: E731
    commands = [[sbin("munged"), f"--key-file={key}", f"--socket={folder / 'munge.sock'}", "--force",
                 f"--pid-file={folder / 'munge' / 'munged.pid'}", f"--log-file={folder / 'munge' / 'munged.log'}",
                 f"--seed-file={folder / 'munge' / 'seed'}"],
                [sbin("slurmctld"), "-c"], [sbin("slurmd"), "-N", node]]
    for command in commands:
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            stop(folder)
            raise SlurmUnavailable(f"{Path(command[0]).name} did not start: {(out.stderr or out.stdout).strip()}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
        if state in ("idle", "mixed", "allocated"):
            return {"SLURM_CONF": str(conf)}
        time.sleep(0.5)
    log = (folder / "slurmd.log").read_text()[-400:] if (folder / "slurmd.log").is_file() else ""
    stop(folder)
    raise SlurmUnavailable(f"the node did not come up within {timeout:g} s (sinfo: {state or 'nothing'}; {log})")


def stop(folder: Path) -> None:
    """Stop the daemons `start` left under `folder` (their pid files)."""
    folder = folder.resolve()
    for pid_file in (folder / "slurmd.pid", folder / "slurmctld.pid", folder / "munge" / "munged.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "stop":
        stop(Path(argv[1]))
        return 0
    try:
        env = start(Path(argv[1]))
    except SlurmUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"export SLURM_CONF={env['SLURM_CONF']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
