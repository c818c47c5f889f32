"""The synthetic dataset a problem ships for CPU runs, generated in its real on-disk
layout: when, where (never over files that are not ours) and under which lock."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from quantlab.errors import DataError
from quantlab.files import exclusive_lock
from quantlab.progress import line

#: written into every synthetic set, with the parameters it was generated from
SYNTHETIC_MARKER = "SYNTHETIC.json"


def prepare_synthetic(synthetic: dict, root: Path, required: Path, name: str,
                      generate: Callable[[Path, dict], str]) -> str | None:
    """`prepare_data` for a problem that ships a synthetic generator: nothing when
    `required` exists (unless the marker says it was generated with other
    `data.synthetic.params`), else generate, or say which file is missing.

    Generation never touches a folder that holds anything but a synthetic set of ours:
    it writes a new folder beside `root` (under a lock, so concurrent runs generate
    once) and renames it into place, over an empty `root` or an incomplete one of ours.
    A `root` that is a symbolic link (a dataset folder on scratch, linked into the data
    root) is generated into where it points; a `root` that is a file is refused. A
    generation that fails leaves nothing behind."""
    real = root.resolve()
    if real.exists() and not real.is_dir():
        raise DataError(f"{root}: data.root must be a folder, but it is a file"
                        + (f" ({real})" if real != root else ""))
    required = real / required.relative_to(root)
    marker = real / SYNTHETIC_MARKER
    if required.is_file():
        if marker.is_file() and json.loads(marker.read_text()) != synthetic["params"]:
            raise DataError(f"{marker}: this synthetic set was generated with other parameters than "
                            "data.synthetic.params; delete it or set data.root")
        return None
    if not synthetic["generate"]:
        raise DataError(f"{required}: missing dataset file "
                        f"(point data.root at {name}, or set data.synthetic.generate=true)")
    if real.is_dir() and any(real.iterdir()) and not marker.is_file():
        raise DataError(f"{required}: missing dataset file; {root} holds other files, so no synthetic set "
                        f"is written there (point data.root at {name}, or at a missing or empty folder to "
                        "generate the synthetic set)")
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{real.parent}: cannot create the folder of data.root ({exc.strerror or exc})") from None
    with exclusive_lock(real.with_name(f".{real.name}.lock"), wait=True):
        if required.is_file():  # another run generated it while this one waited
            return prepare_synthetic(synthetic, root, required, name, generate)
        for stale in real.parent.glob(f".{real.name}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        line(f"no {name} data in {root}: generating the synthetic set first")
        partial = Path(tempfile.mkdtemp(dir=real.parent, prefix=f".{real.name}.", suffix=".partial"))
        try:
            note = generate(partial, synthetic["params"])
            (partial / SYNTHETIC_MARKER).write_text(json.dumps(synthetic["params"], indent=2, sort_keys=True))
            if real.exists():
                shutil.rmtree(real)  # empty, or an incomplete synthetic set of ours
            partial.rename(real)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return note.replace(str(partial), str(root)) if note else note
