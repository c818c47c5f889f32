"""Campaigns: the shipped files plan, bad files stop before anything is submitted, the
estimate is the formula worked by hand, and racing jobs run a child once."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, config, in_process

PY = sys.executable
CAMPAIGN = [PY, str(REPO / "systems" / "campaign.py")]
SHIPPED = ("mqat_swisscube", "mqat_linemod", "detr_ptq", "detr_fisher")


def storage_env(root: Path) -> dict[str, str]:
    (root / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    return dict(os.environ, QUANTLAB_STORAGE=str(root / "hard_storage.json"), PYTHONUNBUFFERED="1")


def campaign(*args: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CAMPAIGN, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def campaign_here(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`campaign.py args` in this process (conftest.in_process): for `plan`, which only
    reads, and for commands refused before anything is submitted."""
    from systems.campaign import main
    return in_process(main, list(args), {"QUANTLAB_STORAGE": env["QUANTLAB_STORAGE"]}, REPO)


TIMING = {"train_float": 0.08, "train_quant": 0.1, "eval": 0.05, "device": "test device"}


def files_under(root: Path) -> dict[str, bytes | None]:
    """Every path under `root`, with a file's bytes (None for a folder)."""
    return {str(f.relative_to(root)): f.read_bytes() if f.is_file() else None for f in sorted(root.rglob("*"))}


def planned_children(spec: dict, experiment: dict) -> list:
    """The child runs the experiment's mode plans for its configuration (the modes' own
    planners, tested with the modes): the input the graph and estimate are checked on."""
    import importlib
    from quantlab.campaign.estimate import experiment_children
    cfg = config(f"{spec['problem']}/{spec['topology']}", experiment.get("profile", spec["profile"]),
                 [*(["quantize.init=0"] if experiment.get("start") else []), *experiment.get("overrides", [])])
    task = importlib.import_module(f"problems.{spec['problem']}.{spec['topology']}").build_task(cfg, REPO / "data")
    return experiment_children(experiment["mode"], cfg, task)


def parse_graph(stdout: str) -> dict[str, dict]:
    """The job lines of `plan`: {job: workers, mode, worker, child runs, after}."""
    jobs = {}
    for line in stdout.splitlines():
        if " --mode " not in line:
            continue
        head, rest = line.split(" --mode ", 1)
        name, _, workers = head.strip().partition(" x")
        rest, _, after = rest.partition("   after ")
        fields = rest.split(", ")
        mode, _, worker = fields[0].partition(" --worker ")
        kids = int(fields[1].split()[0]) if len(fields) > 1 else None
        jobs[name] = {"workers": int(workers or 1), "mode": mode, "worker": worker or None, "children": kids,
                      "after": after.split(", ") if after else []}
    return jobs


def parse_hours(stdout: str) -> dict[str, tuple[float, dict[str, float]]]:
    """The estimate's lines: {experiment, 'campaign' or 'table T': (hours, {part: hours})}."""
    found = {}
    for line in stdout.split("\nestimate: ", 1)[1].splitlines()[1:]:
        label, hours, split = re.fullmatch(r"  (.+?) +([0-9.]+) h(?:   \((.*)\))?", line).groups()
        parts = dict((p.rsplit(" ", 1)[0], float(p.rsplit(" ", 1)[1])) for p in split.split(", ")) if split else {}
        found[label] = (float(hours), parts)
    return found


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_campaign_plans_its_jobs_and_device_hours_and_writes_nothing(name, tmp_path):
    """`plan` of each shipped campaign, read back: its jobs are the graph the campaign file
    and the planned child runs call for (a part with two or more children its own job of
    min(8, children) Slurm workers, after the experiments it starts from and, ended, the
    parts before it; the join after all of them), every device-hour figure is the estimate's
    formula worked here over those child runs with a table counting each experiment it
    transitively needs, and planning writes nothing, with or without timings."""
    from quantlab.modes import MODES
    env = storage_env(tmp_path)
    spec = yaml.safe_load((REPO / "systems" / "campaigns" / f"{name}.yaml").read_text())
    where = f"{spec['problem']}/{spec['topology']}@{spec['profile']}"
    experiments = spec["experiments"]
    children = {e: planned_children(spec, experiments[e]) for e in experiments}

    def needs(e: str) -> list[str]:
        start = experiments[e].get("start")
        return ([start] if start else []) + [a for a in experiments[e].get("after", []) if a != start]

    jobs = {}
    for e, exp in experiments.items():
        mode, made = exp["mode"], []
        for part, before in MODES[mode].parts.items():
            count = sum(c.part == part for c in children[e])
            if count >= 2:  # slurm.yaml: jobs 8
                jobs[f"{e}:{part}"] = {"workers": min(8, count), "mode": mode, "worker": part, "children": count,
                                       "after": needs(e) + [f"{e}:{b} (ended)" for b in before if b in made]}
                made.append(part)
        jobs[e] = {"workers": 1, "mode": mode, "worker": None,
                   "children": len(children[e]) if MODES[mode].parts else None,
                   "after": needs(e) + [f"{e}:{p} (ended)" for p in made]}
    assert any(j["workers"] > 1 for j in jobs.values())  # a fan-out is planned in every shipped campaign

    before = files_under(tmp_path)
    out = campaign_here("plan", name, "--system", "slurm", env=env)
    assert out.returncode == 0, out.stderr
    assert parse_graph(out.stdout) == jobs
    assert "\nestimate: " not in out.stdout and f"measure {name} --system slurm" in out.stdout
    assert files_under(tmp_path) == before

    (tmp_path / "logs" / "campaigns" / "timings").mkdir(parents=True)
    # quantized images this slow make the traces' 100 images show at one decimal
    timing = {**TIMING, "train_quant": 5.0}
    (tmp_path / "logs" / "campaigns" / "timings" / "slurm.json").write_text(json.dumps({where: timing}))
    before = files_under(tmp_path)
    out = campaign_here("plan", name, "--system", "slurm", env=env)
    assert out.returncode == 0, out.stderr
    assert files_under(tmp_path) == before and parse_graph(out.stdout) == jobs

    def cost(e: str, parts: list[str] | None = None) -> float:
        """(epochs x training images + trace passes) x s per training image + evaluations x
        evaluation images x s per evaluation image, over the child runs (of `parts`)."""
        seconds = 0.0
        for c in children[e]:
            if parts is None or c.part in parts:
                per_image = timing["train_quant"] if c.quantized else timing["train_float"]
                seconds += (c.epochs * spec["images"]["train"] + c.images) * per_image
                seconds += c.evals * spec["images"]["eval"] * timing["eval"]
        return seconds / 3600

    def needed(e: str) -> set[str]:
        return {n for direct in needs(e) for n in {direct, *needed(direct)}}

    expected = {e: (cost(e), {p: cost(e, [p]) for p in {c.part for c in children[e] if c.part}}) for e in experiments}
    expected["campaign"] = (sum(cost(e) for e in experiments), {})
    for table, t in spec["tables"].items():
        expected[f"table {table}"] = (cost(t["experiment"], t.get("parts")) + sum(map(cost, needed(t["experiment"]))), {})
    printed = parse_hours(out.stdout)
    assert printed.keys() == expected.keys()
    for label, (total, parts) in expected.items():
        assert printed[label][0] == pytest.approx(total, abs=0.051), label
        assert printed[label][1] == pytest.approx(parts, abs=0.051), label
    assert all(total > 1 for total, _ in expected.values())  # figures rounding cannot hide


def hours(epochs: float, images: int, per_image: float, evals: int, eval_images: int) -> float:
    return (epochs * images * per_image + evals * eval_images * TIMING["eval"]) / 3600


def test_fisher_campaign_estimate_is_the_formula_by_hand(tmp_path):
    """detr_fisher: 3 schemes x 2 regularizer weights, each fisher.epochs of QAT on COCO's
    118,287 images and one evaluation of 5,000; the two Fisher schemes' first runs add
    ptq.images backward passes (their traces)."""
    env = storage_env(tmp_path)
    cfg = config("COCO/DETR", "paper", ["quantize.init=0"])
    runs = 3 * 2 * hours(cfg["fisher"]["epochs"], 118287, TIMING["train_quant"], 1, 5000)
    traces = 2 * cfg["ptq"]["images"] * TIMING["train_quant"] / 3600
    (tmp_path / "logs" / "campaigns" / "timings").mkdir(parents=True)
    (tmp_path / "logs" / "campaigns" / "timings" / "local.json").write_text(
        json.dumps({"COCO/DETR@paper": TIMING}))
    out = campaign("plan", "detr_fisher", env=env)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "table B critical-category QAT" in ln)
    assert float(line.split()[-2]) == pytest.approx(runs + traces, abs=0.05)
    assert "fisher:runs x2" in out.stdout and "6 child runs" in out.stdout


def test_swisscube_campaign_counts_the_float_model_in_each_table(tmp_path):
    """T-A2 (the cube) = the float training + the float evaluation + 7 probes of
    stage_epochs each; the float training is epochs x 40,000 images with an evaluation
    every eval_every epochs."""
    env = storage_env(tmp_path)
    cfg = config("SwissCube/Widedepth", "paper", ["quantize.init=0"])
    epochs, every = cfg["training"]["epochs"], cfg["engine"]["eval_every"]
    float_run = hours(epochs, 40000, TIMING["train_float"], -(-epochs // every), 10000)
    cube = hours(0, 40000, 0, 1, 10000) + 7 * hours(cfg["mqat"]["stage_epochs"], 40000, TIMING["train_quant"], 1, 10000)
    (tmp_path / "logs" / "campaigns" / "timings").mkdir(parents=True)
    (tmp_path / "logs" / "campaigns" / "timings" / "local.json").write_text(
        json.dumps({"SwissCube/Widedepth@paper": TIMING}))
    out = campaign("plan", "mqat_swisscube", env=env)
    line = next(ln for ln in out.stdout.splitlines() if "table T-A2 cube" in ln)
    assert float(line.split()[-2]) == pytest.approx(float_run + cube, abs=0.05)


def test_a_search_with_seeds_plans_its_children_once_per_seed():
    """seeds=[0, 1, 2] runs a cube's children three times (modes.execute), so the plan counts them three times."""
    from problems.SwissCube.Widedepth import build_task
    from quantlab.campaign.estimate import experiment_children
    cfg = config("SwissCube/Widedepth", "mini", ["quantize.init=0"])
    task = build_task(cfg, REPO / "data")
    once = experiment_children("cube", cfg, task)
    seeded = experiment_children("cube", {**cfg, "seeds": [0, 1, 2]}, task)
    assert len(once) == 8 and len(seeded) == 24
    assert [c.name for c in seeded[8:16]] == [f"seed1/{c.name}" for c in once]
    assert [c._replace(name="") for c in seeded[16:]] == [c._replace(name="") for c in once]


BAD = {
    "topology": ("problem: SwissCube\ntopology: Widedeep\nexperiments: {a: {mode: train}}\n", "Widedeep"),
    "mode": ("problem: SwissCube\ntopology: Widedepth\nexperiments: {a: {mode: trian}}\n", "unknown mode 'trian'"),
    "profile": ("problem: SwissCube\ntopology: Widedepth\nprofile: huge\nexperiments: {a: {mode: train}}\n",
                "unknown profile 'huge'"),
    "key": ("problem: SwissCube\ntopology: Widedepth\nexperiments:\n  a: {mode: train, overrides: [training.epoch=3]}\n",
            "training.epoch"),
    "campaign key": ("problem: SwissCube\ntopology: Widedepth\nexperimets: {}\n", "experimets"),
    "dependency": ("problem: SwissCube\ntopology: Widedepth\nexperiments: {a: {mode: mqat, start: flaot}}\n",
                   "'flaot'"),
    # names become folders and Slurm job names: no line break, no path
    "name with a line break": ('problem: SwissCube\ntopology: Widedepth\nexperiments: {"fl\\ntouch PWNED\\n#": '
                               '{mode: train}}\n', "experiment name: 'fl\\ntouch PWNED\\n#' is not a valid name"),
    "campaign name with a slash": ("campaign: ../../escape\nproblem: SwissCube\ntopology: Widedepth\n"
                                   "experiments: {a: {mode: train}}\n", "campaign: '../../escape' is not a valid name"),
    "campaign name with a space": ("campaign: my run\nproblem: SwissCube\ntopology: Widedepth\n"
                                   "experiments: {a: {mode: train}}\n", "campaign: 'my run' is not a valid name"),
    "table with a path": ("problem: SwissCube\ntopology: Widedepth\nexperiments: {a: {mode: train}}\n"
                          "tables: {T: {experiment: a, table: ../x}}\n", "table: '../x' is not a valid name"),
    # values of the wrong type, which were read character by character or crashed
    "images as words": ("problem: SwissCube\ntopology: Widedepth\nimages: {train: lots, eval: 1}\n"
                        "experiments: {a: {mode: train}}\n", "images.train must be a whole number"),
    "after as a string": ("problem: SwissCube\ntopology: Widedepth\nexperiments: {float: {mode: train}, "
                          "b: {mode: train, after: float}}\n", "experiment 'b': after must be a list, e.g. [float]"),
    "overrides as a string": ("problem: SwissCube\ntopology: Widedepth\nexperiments: {a: {mode: train, "
                              "overrides: \"training.epochs=3\"}}\n", "overrides must be a list"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_campaign_is_one_line_before_anything_is_submitted(case, tmp_path):
    text, named = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = campaign_here("submit", str(path), env=storage_env(tmp_path))  # refused before anything runs
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and str(path) in out.stderr and named in out.stderr
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("exp*"))
    assert not (tmp_path / "PWNED").exists() and not (REPO / "PWNED").exists()


def test_a_slurm_script_holds_no_value_of_the_campaign_file_and_refuses_a_broken_option(tmp_path):
    """The job's name and output go to sbatch as arguments; the script holds the system's own
    `#SBATCH` options, each checked to be one line, and shell-quoted words."""
    from quantlab.campaign.graph import Job
    from quantlab.campaign.slurm import options, script
    from quantlab.campaign.state import CampaignState
    from quantlab.errors import ConfigError
    state, job = CampaignState(tmp_path, "c1"), Job("mqat:cube", "mqat", "mqat", "cube", workers=2)
    text = script(job, state, ["python", "main.py", "--set", "a=$(touch x)"], ["--ntasks=1"], tmp_path)
    assert [line for line in text.splitlines() if line.startswith("#SBATCH")] == ["#SBATCH --ntasks=1"]
    assert "'a=$(touch x)'" in text and "job-name" not in text
    assert options(job, state) == ["--job-name=c1:mqat:cube", f"--output={state.jobs / 'mqat-cube.%a.out'}",
                                   "--array=0-1"]
    with pytest.raises(ConfigError, match="no line break"):
        script(job, state, ["python"], ["--ntasks=1\ntouch PWNED"], tmp_path)


RACER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from types import SimpleNamespace
    sys.path.insert(0, sys.argv[1])
    from quantlab.engine import distributed as dist
    dist.init(1)
    from quantlab.engine.claims import Jobs
    from quantlab.engine.distributed import World
    folder, worker = Path(sys.argv[2]), sys.argv[3] == "worker"
    ctx = SimpleNamespace(world=World(0, 1, 0, 1), options={"worker": "p" if worker else None}, say=print)
    jobs = Jobs(ctx, "race", ("p",))
    ledger = jobs.ledger(folder / "ledger.json")
    while not (folder / "go").exists():
        time.sleep(0.01)
    def run():
        with open(folder / "ran", "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        time.sleep(1.5)
        return {"metric": 1.0, "by": os.getpid()}
    with jobs.part("p"):
        entry = ledger.obtain("child", run)
    print(json.dumps(entry))
""")


@pytest.mark.parametrize("second", ["waits", "worker"])
def test_two_jobs_racing_for_one_child_run_it_once(second, tmp_path):
    """Two processes ask for the same child at the same instant: one runs it; the other
    waits and takes its entry (a whole run) or, as a worker of the part, leaves it (None)."""
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    kinds = ["waits", second]
    procs = [subprocess.Popen([PY, str(script), str(REPO), str(tmp_path), k], stdout=subprocess.PIPE, text=True)
             for k in kinds]
    time.sleep(2.0)  # both started and waiting for the signal
    (tmp_path / "go").touch()
    outs = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    ran = (tmp_path / "ran").read_text().split()
    assert len(ran) == 1
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert ledger["child"]["by"] == int(ran[0])
    runner = [o for o in outs if o is not None and o["by"] == int(ran[0])]
    assert runner
    if second == "waits":
        assert outs[0] == outs[1] == ledger["child"]
    else:
        assert None in outs or procs[1].pid == int(ran[0])


def tiny_campaign(root: Path, epochs: int, name: str = "tiny") -> Path:
    """A one-experiment local campaign training the tiny SwissCube set (conftest's storage)."""
    from tests.test_engine import TINY_SET
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"campaign": name, "problem": "SwissCube", "topology": "Widedepth",
                                    "experiments": {"float": {"mode": "train", "overrides": [
                                        *TINY_SET, f"training.epochs={epochs}"]}}}))
    return path


def test_an_edited_experiment_is_refused_naming_the_keys_instead_of_silently_continuing(storage):
    """After a first submit, the experiment's configuration is fixed: changing its overrides
    in the file (here its epochs) is one line naming the key, old and new value, and nothing runs."""
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1")
    path = tiny_campaign(storage, 1)
    assert campaign("submit", str(path), env=env).returncode == 0
    path.write_text(path.read_text().replace("training.epochs=1", "training.epochs=3"))
    out = campaign("submit", str(path), env=env)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stdout + out.stderr
    assert "experiment 'float' (exp0000)" in out.stderr and "training.epochs (1 -> 3)" in out.stderr
    assert "started" not in out.stdout
    assert sorted(p.name for p in (storage / "logs" / "SwissCube" / "Widedepth").iterdir()) == ["exp0000"]
    # undone, the campaign continues: everything is done already
    path.write_text(path.read_text().replace("training.epochs=3", "training.epochs=1"))
    again = campaign("submit", str(path), env=env)
    assert again.returncode == 0 and "every job done" in again.stdout


def test_a_stopped_local_submit_stops_the_jobs_it_started(storage):
    """SIGTERM to `campaign.py submit --system local` reaches its running jobs: their runs
    save and stop, the submit ends after them, and no process of the campaign runs on."""
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1")
    path = tiny_campaign(storage, 200, "long")
    submit = subprocess.Popen([*CAMPAIGN, "submit", str(path)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    saves = storage / "logs" / "SwissCube" / "Widedepth" / "exp0000" / "saves" / "last.pt"
    deadline = time.monotonic() + 120
    while not saves.is_file():
        assert time.monotonic() < deadline and submit.poll() is None, "the job never saved an epoch"
        time.sleep(0.2)
    submit.send_signal(signal.SIGTERM)
    out, _ = submit.communicate(timeout=90)
    assert submit.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM: 1 running job process(es) stopped" in out
    left = subprocess.run(["pgrep", "-f", str(storage)], capture_output=True, text=True).stdout.split()
    assert not left, subprocess.run(["ps", "-o", "pid,args", "-p", ",".join(left)], capture_output=True,
                                    text=True).stdout
    record = json.loads((storage / "logs" / "campaigns" / "long" / "jobs" / "float.0.json").read_text())
    assert record["state"] == "failed" and record["exit_code"] != 0


FAILER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from types import SimpleNamespace
    sys.path.insert(0, sys.argv[1])
    from quantlab.engine import distributed as dist
    dist.init(1)
    from quantlab.engine.claims import Jobs
    from quantlab.engine.distributed import World
    from quantlab.errors import QuantlabError, TrainingError
    folder, worker, broken = Path(sys.argv[2]), sys.argv[3] == "worker", sys.argv[4] == "broken"
    ctx = SimpleNamespace(world=World(0, 1, 0, 1), options={"worker": "p" if worker else None}, say=print,
                          logbook=SimpleNamespace(exp_id=7))
    jobs = Jobs(ctx, "search", ("p",))
    ledger = jobs.ledger(folder / "ledger.json")
    def run(key):
        def child():
            with open(folder / "ran", "a") as fh:
                fh.write(key + "\\n")
            if key == "b" and broken:
                raise TrainingError("the model diverged in epoch 2")
            return {"metric": 1.0}
        return child
    try:
        with jobs.part("p"):
            for key in ("a", "b", "c"):
                ledger.obtain(key, run(key))
    except QuantlabError as exc:
        print(f"error: {exc}")
        sys.exit(1)
""")


def test_a_failing_child_is_recorded_and_its_siblings_still_run(tmp_path):
    """A child that raises is recorded as failed with its error; its part goes on with the
    others and the job ends with one error naming it; another worker of the part leaves it
    (no second failure); `status` says failed; the experiment's own job runs it again."""
    from systems.campaign import children_status
    script = tmp_path / "failer.py"
    script.write_text(FAILER)
    folder = tmp_path / "exp" / "search"
    folder.mkdir(parents=True)

    def job(kind: str, broken: bool) -> subprocess.CompletedProcess:
        return subprocess.run([PY, str(script), str(REPO), str(folder), kind, "broken" if broken else "fixed"],
                              capture_output=True, text=True, timeout=60)
    first = job("worker", True)
    assert first.returncode == 1 and "1 child run(s) of part 'p' failed ('b': the model diverged in epoch 2); " \
                                      "the others ran" in first.stdout, first.stdout + first.stderr
    assert (folder / "ran").read_text().split() == ["a", "b", "c"]
    ledger = json.loads((folder / "ledger.json").read_text())
    assert ledger["a"] == ledger["c"] == {"metric": 1.0} and ledger["b"]["failed"] == "the model diverged in epoch 2"
    second = job("worker", True)  # a sibling worker: everything is recorded, b is left to the join
    assert second.returncode == 0 and "'b' failed in another job" in second.stdout
    assert (folder / "ran").read_text().split() == ["a", "b", "c"]
    status = children_status(tmp_path / "exp")
    assert status.startswith("2 children done, failed") and "b (the model diverged in epoch 2)" in status
    join = job("join", False)
    assert join.returncode == 0, join.stdout
    assert (folder / "ran").read_text().split() == ["a", "b", "c", "b"]
    assert json.loads((folder / "ledger.json").read_text())["b"] == {"metric": 1.0}
    assert children_status(tmp_path / "exp") == "3 children done"


def test_status_without_a_reachable_slurm_says_so_in_one_line_and_still_reports(tmp_path):
    (tmp_path / "no-controller.conf").write_text("ClusterName=none\n")  # a Slurm that cannot be reached
    env = dict(storage_env(tmp_path), SLURM_CONF=str(tmp_path / "no-controller.conf"))
    path = tiny_campaign(tmp_path, 1)
    out = campaign("status", str(path), "--system", "slurm", env=env)
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stdout.splitlines() if "note:" in line]
    assert len(notes) == 1 and "Slurm's squeue failed:" in notes[0] and "job records alone" in notes[0]
    assert "float" in out.stdout and "squeue: error" not in out.stdout + out.stderr
    submit = campaign("submit", str(path), "--system", "slurm", env=env)
    assert submit.returncode == 1 and len(submit.stderr.strip().splitlines()) == 1, submit.stderr
    assert "Slurm's squeue failed" in submit.stderr and "Traceback" not in submit.stderr
    assert not (tmp_path / "logs" / "SwissCube").exists()  # refused before any experiment was created


@pytest.mark.parametrize("record", ["state.json", "jobs/float.0.json"])
def test_a_damaged_campaign_record_is_one_line_naming_it(tmp_path, record):
    env = storage_env(tmp_path)
    folder = tmp_path / "logs" / "campaigns" / "mqat-swisscube"
    (folder / "jobs").mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"experiments": {}, "submitted": {}}))
    (folder / record).write_text('{"experiments": {"float": 0')  # cut short
    out = campaign_here("status", "mqat_swisscube", env=env)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"{folder / record}: damaged record, not JSON" in out.stderr and "Traceback" not in out.stderr


def test_a_damaged_ledger_is_one_line_naming_it(tmp_path):
    from quantlab.errors import ExperimentError
    from quantlab.records import Ledger
    (tmp_path / "ledger.json").write_text("[1, 2]")
    with pytest.raises(ExperimentError, match=r"ledger.json: damaged record, expected a JSON object, found list"):
        Ledger(tmp_path / "ledger.json")
    (tmp_path / "ledger.json").write_bytes(b"\xff\xfe not text")
    with pytest.raises(ExperimentError, match=r"ledger.json: damaged record, not JSON"):
        Ledger(tmp_path / "ledger.json")
