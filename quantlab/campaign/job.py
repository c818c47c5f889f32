"""One process of a campaign job: run the command, recording what it did.

    python -m quantlab.campaign.job CAMPAIGN_FOLDER JOB INDEX -- COMMAND...

Holds the process's lock while the command runs (so `status` tells running from died),
records running / done / failed with the exit code, and passes SIGTERM and SIGINT on to
the command (`scancel`, a local stop), whose runs save what they have and stop.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from quantlab.campaign.state import DONE, FAILED, RUNNING, CampaignState
from quantlab.files import Busy, exclusive_lock, write_text_atomic


def main(argv: list[str]) -> int:
    split = argv.index("--")
    folder, job, index = Path(argv[0]), argv[1], int(argv[2])
    command = argv[split + 1:]
    state = CampaignState(folder.parents[1], folder.name)
    record = {"job": job, "index": index, "host": socket.gethostname(), "pid": os.getpid(),
              "slurm_job": os.environ.get("SLURM_JOB_ID"), "command": command, "started": time.time()}
    try:
        with exclusive_lock(state.lock_path(job, index), wait=False):
            write_text_atomic(state.record_path(job, index), json.dumps({**record, "state": RUNNING}, indent=2))
            proc = subprocess.Popen(command)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda s, _: proc.send_signal(s))
            code = proc.wait()
            write_text_atomic(state.record_path(job, index), json.dumps(
                {**record, "state": DONE if code == 0 else FAILED, "exit_code": code, "ended": time.time()}, indent=2))
    except Busy:
        print(f"{state.lock_path(job, index)}: job {job} process {index} is already running", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
