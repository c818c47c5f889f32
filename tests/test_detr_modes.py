"""COCO / DETR through main.py on a tiny synthetic set: training with the Fisher-trace
regularizer, a 2-rank weight-only PTQ run over every scheme with its table, and
Fisher-aware mixed-precision QAT with and without the regularizer, resumed."""
import json
import re

import pytest
import yaml

from tests.test_engine import HOROVODRUN, PY, REPO

TINY = ["data.root=COCO-tiny", "data.synthetic.params.image_size=64",
        "data.synthetic.params.images={train: 8, val: 4}", "input.train_scales=[64]", "input.val_size=64",
        "input.max_size=64", "training.batch_size=4", "evaluation.batch_size=2", "engine.threads=1"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    root = tmp_path_factory.mktemp("detr")
    (root / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    return root


def run(storage, *args, sets=(), ranks=1):
    import os
    import subprocess
    cmd = [str(REPO / "main.py"), "--problem", "COCO", "--topology", "DETR", *args]
    for s in [*TINY, *sets]:
        cmd += ["--set", s]
    full = [PY, *cmd] if ranks == 1 else [HOROVODRUN, "-np", str(ranks), "-H", f"localhost:{ranks}", PY, *cmd]
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1")
    return subprocess.run(full, env=env, capture_output=True, text=True, timeout=400, cwd=storage)


def experiment(storage, out) -> tuple[int, object]:
    assert out.returncode == 0, out.stdout + out.stderr
    number = int(re.search(r"experiment \S*exp(\d{4})", out.stdout).group(1))
    return number, storage / "logs" / "COCO" / "DETR" / f"exp{number:04d}"


@pytest.fixture(scope="module")
def float_model(storage):
    """A float DETR trained one epoch with the Fisher-trace regularizer."""
    out = run(storage, sets=["training.epochs=1", "quantize.fisher_regularizer=0.1"])
    number, exp = experiment(storage, out)
    metrics = json.loads((exp / "eval" / "epoch_0001" / "metrics.json").read_text())
    assert {"mAP", "critical_mAP", "AP/blue triangle"} <= set(metrics)
    assert "fisher=" in out.stdout  # the regularizer is a logged loss term
    return number


def test_ptq_of_every_scheme_on_two_ranks(storage, float_model):
    sets = [f"quantize.init={float_model}", "ptq.images=4", "ptq.samples=1", "ptq.targets=[4]"]
    out = run(storage, "--mode", "ptq", sets=sets, ranks=2)
    _, exp = experiment(storage, out)
    results = json.loads((exp / "ptq" / "results.json").read_text())
    assert set(results) == {"float@32", "uniform@8", *(f"{s}@4" for s in
                            ["uniform", "loss", "output_float", "output_quant", "fisher_overall", "fisher_critical"])}
    assert results["float@32"]["bits"] == {} and set(results["uniform@4"]["bits"].values()) == {4}
    for key, r in results.items():
        assert not any(layer.startswith(("class_embed", "bbox_embed")) for layer in r["bits"])  # heads stay float
        if key.endswith("@4") and not key.startswith("uniform"):
            assert r["average_bits"] <= 4.0 + 1e-9 and set(r["bits"].values()) <= {3, 4, 5, 6}
            assert set(r["bits"]) == set(results["uniform@4"]["bits"])  # every layer gets bits
    traces = json.loads((exp / "ptq" / "traces.json").read_text())
    assert set(traces) == {"loss", "output_float", "output_quant", "fisher_overall", "fisher_critical"}
    # 4 images over 2 ranks: 4 samples of every layer, pooled, each trace with its error
    assert all(t["samples"] == 4 and t["se"] >= 0 for s in traces.values() for t in s.values())
    assert all(t["trace"] > 0 for t in traces["fisher_overall"].values())  # squared gradients
    table = (exp / "tables" / "detr_ptq.md").read_text()
    assert "| 4 |" in table and "25.90" in out.stdout
    # every Hutchinson scheme with a negative or unsure trace says so, in the log and under the table
    for scheme in ("loss", "output_float", "output_quant"):
        negative = sum(t["trace"] < 0 for t in traces[scheme].values())
        unsure = sum(abs(t["trace"]) <= 1.96 * t["se"] for t in traces[scheme].values())
        line = (f"traces of {scheme}: {negative} of {len(traces[scheme])} traces negative, {unsure} not "
                "significant (|trace| < 1.96 standard errors); ptq.negative_traces: abs uses |trace|")
        assert (line in out.stdout and f"- {line}" in table) == bool(negative or unsure), scheme


def test_fisher_qat_with_and_without_the_regularizer_then_resumed(storage, float_model):
    sets = [f"quantize.init={float_model}", "ptq.images=4", "fisher.epochs=1", "fisher.regularizers=[0, 0.1]"]
    out = run(storage, "--mode", "fisher", sets=sets)
    number, exp = experiment(storage, out)
    plans = json.loads((exp / "fisher" / "allocations.json").read_text())
    assert set(plans["uniform"]["bits"].values()) == {4} and plans["float"]["average_bits"] == 32.0
    for scheme in ("fisher_overall", "fisher_critical"):
        assert plans[scheme]["average_bits"] <= 4.0 + 1e-9 and set(plans[scheme]["bits"].values()) <= {3, 4, 5, 6}
        assert set(plans[scheme]["bits"]) == set(plans["uniform"]["bits"])
    results = json.loads((exp / "fisher" / "results.json").read_text())
    assert set(results) == {f"{s}@{w}" for s in ("uniform", "fisher_overall", "fisher_critical") for w in (0, 0.1)}
    for key, entry in results.items():
        if "same_as" in entry:  # a scheme whose bits equal an earlier one's reuses its runs
            assert plans[entry["same_as"]]["bits"] == plans[entry["scheme"]]["bits"]
            continue
        child = exp / "children" / "fisher" / f"{entry['scheme']}_lambda{entry['regularizer']:g}"
        cfg = yaml.safe_load((child / "config.yaml").read_text())
        assert cfg["quantize"]["fisher_regularizer"] == entry["regularizer"]
        assert {r["modules"].replace("\\", ""): r["bits"] for r in cfg["quantize"]["rules"]} == \
            plans[entry["scheme"]]["bits"]
    assert out.stdout.count("fisher=") >= 1 and "| uniform | 0.1 |" in out.stdout
    again = run(storage, "--mode", "fisher", "--exp_id", str(number), sets=sets)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "epoch 1/1" not in again.stdout  # nothing trained twice
    assert json.loads((exp / "fisher" / "results.json").read_text()) == results
    table = run(storage, "--mode", "table", "--exp_id", str(number), "--table", "detr_fisher")
    assert table.returncode == 0 and "| float | - | 32.00 |" in table.stdout
