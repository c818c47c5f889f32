"""COCO / DETR through main.py on a tiny synthetic set: training with the Fisher-trace
regularizer, and a 2-rank weight-only PTQ run over every scheme with its table."""
import json

import pytest

from tests.test_engine import HOROVODRUN, PY, REPO

TINY = ["data.root=COCO-tiny", "data.synthetic.params.image_size=64",
        "data.synthetic.params.images={train: 8, val: 4}", "input.train_scales=[64]", "input.val_size=64",
        "input.max_size=64", "training.batch_size=4", "evaluation.batch_size=2", "engine.threads=1"]


@pytest.fixture()
def storage(tmp_path):
    (tmp_path / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    return tmp_path


def run(storage, *args, sets=(), ranks=1):
    import os
    import subprocess
    cmd = [str(REPO / "main.py"), "--problem", "COCO", "--topology", "DETR", *args]
    for s in [*TINY, *sets]:
        cmd += ["--set", s]
    full = [PY, *cmd] if ranks == 1 else [HOROVODRUN, "-np", str(ranks), "-H", f"localhost:{ranks}", PY, *cmd]
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1")
    return subprocess.run(full, env=env, capture_output=True, text=True, timeout=400, cwd=storage)


def test_training_with_the_fisher_regularizer_then_ptq_on_two_ranks(storage):
    out = run(storage, sets=["training.epochs=1", "quantize.fisher_regularizer=0.1"])
    assert out.returncode == 0, out.stdout + out.stderr
    exp = storage / "logs" / "COCO" / "DETR"
    metrics = json.loads((exp / "exp0000" / "eval" / "epoch_0001" / "metrics.json").read_text())
    assert {"mAP", "critical_mAP", "AP/blue triangle"} <= set(metrics)
    assert "fisher=" in out.stdout  # the regularizer is a logged loss term
    sets = ["quantize.init=0", "ptq.images=4", "ptq.samples=1", "ptq.targets=[4]"]
    out = run(storage, "--mode", "ptq", sets=sets, ranks=2)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((exp / "exp0001" / "ptq" / "results.json").read_text())
    assert set(results) == {"float@32", "uniform@8", *(f"{s}@4" for s in
                            ["uniform", "loss", "output_float", "output_quant", "fisher_overall", "fisher_critical"])}
    assert results["float@32"]["bits"] == {} and set(results["uniform@4"]["bits"].values()) == {4}
    for key, r in results.items():
        assert not any(layer.startswith(("class_embed", "bbox_embed")) for layer in r["bits"])  # heads stay float
        if key.endswith("@4") and not key.startswith("uniform"):
            assert r["average_bits"] <= 4.0 + 1e-9 and set(r["bits"].values()) <= {3, 4, 5, 6}
            assert set(r["bits"]) == set(results["uniform@4"]["bits"])  # every layer gets bits
    traces = json.loads((exp / "exp0001" / "ptq" / "traces.json").read_text())
    assert set(traces) == {"loss", "output_float", "output_quant", "fisher_overall", "fisher_critical"}
    assert all(v > 0 for v in traces["fisher_overall"].values())  # squared gradients
    assert "| 4 |" in (exp / "exp0001" / "tables" / "detr_ptq.md").read_text() and "25.90" in out.stdout
