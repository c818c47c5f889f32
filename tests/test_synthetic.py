"""Generating a synthetic set: the message names where the data ends up, not the
temporary folder it was written in, and the output is written in one piece."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from quantlab.engine.synthetic import prepare_synthetic
from tests.conftest import REPO


def test_the_generation_note_names_the_data_root_not_the_temporary_folder(tmp_path):
    seen = []

    def generate(folder: Path, params: dict) -> str:
        seen.append(folder)
        (folder / "train.txt").write_text("x")
        return f"generated {params['n']} images in {folder} ({folder / 'train.txt'})"
    root = tmp_path / "data" / "Toy"
    note = prepare_synthetic({"generate": True, "params": {"n": 3}}, root, root / "train.txt", "Toy", generate)
    assert seen and seen[0] != root and seen[0].name.endswith(".partial")  # it did write elsewhere first
    assert note == f"generated 3 images in {root} ({root / 'train.txt'})"
    assert (root / "train.txt").read_text() == "x" and not list(root.parent.glob("*.partial"))


def test_a_rank_line_is_one_write_so_mpirun_tags_no_lone_newline(tmp_path):
    """Horovod runs ranks unbuffered: print() writes text and newline apart and mpirun
    tags the newline (`...[1,0]<stdout>:` at a line's end); progress.line does not."""
    script = tmp_path / "lines.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom quantlab.progress import line\n"
                      "for i in range(20):\n"
                      "    line(f'out {i} ' + 'x' * i)\n"
                      "    line(f'err {i}', sys.stderr)\n")
    # env: Python's view of the environment, without what an in-process Horovod of an
    # earlier test (an MPI singleton) set underneath it, which mpirun would take as its own
    done = subprocess.run([str(Path(sys.executable).with_name("horovodrun")), "-np", "2", "-H", "localhost:2",
                           sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    rows = (done.stdout + done.stderr).splitlines()
    ours = [r for r in rows if "out " in r or "err " in r]
    assert len(ours) == 80
    assert all(r.count(">:") == 1 and not r.endswith(">:") for r in ours), [r for r in ours if r.count(">:") != 1]
