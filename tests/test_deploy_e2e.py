"""--mode deploy on a finished experiment, through main.py under 2 Horovod ranks: the files,
the evaluations, the table; a partly frozen checkpoint and a missing one are refused
before anything is written."""
from __future__ import annotations

import json

from tests.test_engine import exp_dir, main_cmd, run

FAST = ["deploy.runs=2", "deploy.warmup=0", "deploy.profile_runs=1", "deploy.calibration_batches=1",
        "deploy.threads=1"]


def test_deploy_writes_an_integer_model_its_evaluations_and_the_table(storage):
    qat = ["training.lr=0.0",
           "quantize.rules=[{modules: backbone, algorithm: lsq, bits: 4, per_channel: true, act_algorithm: lsq, "
           "act_bits: 8, act_signed: true}, {modules: fpn, algorithm: inq, bits: 2}, "
           "{modules: head, algorithm: symmetric, bits: 8, act_algorithm: ste, act_bits: 8}]",
           "quantize.inq_schedule={0: 0.5, 1: 1.0}"]
    assert run(main_cmd("--mode", "train", sets=qat), storage).returncode == 0
    exp = exp_dir(storage, 0)
    # epoch 1 is half frozen: no integer weights, nothing written
    half = run(main_cmd("--mode", "deploy", "--exp_id", "0", "--ckpt", "1", sets=FAST), storage)
    assert half.returncode != 0
    assert half.stderr.strip().splitlines()[-1].endswith(
        "epoch_0001.pt: layer fpn.inner_convs.2: INQ layer is 50% frozen; only a fully frozen layer has integer weights")
    assert not (exp / "deploy").exists()
    missing = run(main_cmd("--mode", "deploy", "--exp_id", "0", "--ckpt", "mqat", sets=FAST), storage)
    assert missing.returncode != 0 and "no finished MQAT result for --ckpt mqat" in missing.stderr
    out = run(main_cmd("--mode", "deploy", "--exp_id", "0", "--ckpt", "last", sets=FAST), storage, ranks=2)
    assert out.returncode == 0, out.stdout + out.stderr
    folder = exp / "deploy" / "last"
    assert {p.name for p in folder.iterdir()} == {"model_fp32.onnx", "model_int8.onnx", "model_int.pt",
                                                  "report.json"}
    report = json.loads((folder / "report.json").read_text())
    assert report["float_weight_nodes"] == [] and report["operators"]["QLinearConv"] > 0
    assert report["activations"]["learned"] > 0 and report["layer_codes"] > 0
    for tag in ("test_last", "deploy_last", "deploy_last_fp32"):
        assert "ADI-0.1d/all" in json.loads((exp / "eval" / tag / "metrics.json").read_text())
    table = (exp / "tables" / "deploy.md").read_text()
    assert "onnxruntime int8" in table and "weight operators left in float: none" in table
    assert not list((exp / "deploy").glob(".*"))  # no staging folder left
