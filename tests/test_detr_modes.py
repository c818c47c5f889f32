"""COCO / DETR through main.py on a tiny synthetic set: training with the Fisher-trace
regularizer, a 2-rank weight-only PTQ run over every scheme with its table, and
Fisher-aware mixed-precision QAT with and without the regularizer, resumed."""
import json
import re

import pytest
import yaml

from tests.test_engine import HOROVODRUN, PY, REPO, TORCHRUN

TINY = ["data.root=COCO-tiny", "data.synthetic.params.image_size=64",
        "data.synthetic.params.images={train: 8, val: 4}", "input.train_scales=[64]", "input.val_size=64",
        "input.max_size=64", "training.batch_size=4", "evaluation.batch_size=2", "engine.threads=1"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    root = tmp_path_factory.mktemp("detr")
    (root / "hard_storage.json").write_text(json.dumps({"data": "data", "logs": "logs"}))
    return root


def run(storage, *args, sets=(), ranks=1, launcher="horovodrun"):
    import os
    import subprocess
    cmd = [str(REPO / "main.py"), "--problem", "COCO", "--topology", "DETR", *args]
    for s in [*TINY, *sets]:
        cmd += ["--set", s]
    full = [PY, *cmd] if ranks == 1 else (
        [HOROVODRUN, "-np", str(ranks), "-H", f"localhost:{ranks}", PY, *cmd] if launcher == "horovodrun"
        else [TORCHRUN, "--standalone", "--nproc_per_node", str(ranks), *cmd])
    env = dict(os.environ, QUANTLAB_STORAGE=str(storage / "hard_storage.json"), PYTHONUNBUFFERED="1")
    return subprocess.run(full, env=env, capture_output=True, text=True, timeout=400, cwd=storage)


def plan_of(mode: str, sets: list[str]) -> list:
    """The children `--mode mode` with `sets` plans for a campaign."""
    from quantlab.modes import MODES
    from tests.conftest import config
    return MODES[mode].plan(config("COCO/DETR", "mini", TINY + sets), None)


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


@pytest.mark.parametrize("launcher", ["horovodrun", "torchrun"])
def test_the_box_count_sent_a_batch_ahead_trains_the_same_weights_as_inside_the_step(storage, launcher):
    """Two ranks, four steps: the box count's all-reduce started a batch ahead (the
    default) gives weights identical to the bit to the all-reduce inside each step."""
    import torch
    weights = []
    for ahead in ("true", "false"):
        out = run(storage, sets=["training.epochs=2", "training.batch_size=2", "engine.eval_every=0",
                                 f"engine.counts_ahead={ahead}"], ranks=2, launcher=launcher)
        _, exp = experiment(storage, out)
        weights.append(torch.load(exp / "saves" / "last.pt", weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], torch.zeros_like(weights[0][k])) for k in weights[0])


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
    # the campaign's plan lists exactly these evaluations, and traces where they were made
    planned = plan_of("ptq", sets)
    assert sorted(c.name for c in planned) == sorted(results)
    assert {c.name.split("@")[0] for c in planned if c.images} == set(traces)
    table = (exp / "tables" / "detr_ptq.md").read_text()
    start = storage / "logs" / "COCO" / "DETR" / f"exp{float_model:04d}"
    assert_averages_are_weighted_by_the_float_weights(results, start)
    assert_float_row_is_the_trained_starts_own_evaluation(results, exp, start)
    assert_table_cells_are_the_results(table, results)
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
    planned = plan_of("fisher", sets)  # the campaign's plan: these runs, traces where they were made
    assert sorted(c.name for c in planned) == sorted(results)
    assert {c.name.split("@")[0] for c in planned if c.images} == set(
        json.loads((exp / "fisher" / "traces.json").read_text()))
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


def weight_counts(start) -> dict[str, int]:
    """Weight elements of every quantizable layer, counted from the float checkpoint: each
    Conv/Linear weight and each attention's in and out projections, the class and box
    heads and the query embedding aside."""
    import torch
    state = torch.load(start / "saves" / "best.pt", map_location="cpu", weights_only=False)["model"]
    counts = {}
    for key, value in state.items():
        if key.endswith(".in_proj_weight"):
            layer = key[:-len(".in_proj_weight")]
            counts[layer] = value.numel() + state[f"{layer}.out_proj.weight"].numel()
        elif key.endswith(".weight") and value.dim() in (2, 4) and ".out_proj." not in key:
            counts[key[:-len(".weight")]] = value.numel()
    return {k: n for k, n in counts.items() if not k.startswith(("class_embed", "bbox_embed", "query_embed"))}


def assert_averages_are_weighted_by_the_float_weights(results: dict, start) -> None:
    """Every result's average_bits is sum(n_l b_l) / sum(n_l) over the layers' weight
    elements (a layer without bits is float), recomputed here from the checkpoint; the
    mixed allocations differ from their unweighted mean, so a plain mean would show."""
    counts = weight_counts(start)
    assert set(results["uniform@4"]["bits"]) == set(counts)
    for key, r in results.items():
        weighted = sum(n * r["bits"].get(layer, 32) for layer, n in counts.items()) / sum(counts.values())
        assert r["average_bits"] == pytest.approx(weighted, rel=1e-12), key
    mixed = [r for r in results.values() if len(set(r["bits"].values())) > 1]
    assert mixed and all(sum(r["bits"].values()) / len(r["bits"]) != pytest.approx(r["average_bits"]) for r in mixed)


def assert_float_row_is_the_trained_starts_own_evaluation(results: dict, exp, start) -> None:
    """PTQ's float@32, evaluated on 2 ranks, scores the trained start image for image as its
    own 1-rank evaluation after epoch 1 did; 8-bit uniform PTQ changes the detections."""
    import numpy as np
    own = np.load(start / "eval" / "epoch_0001" / "per_image.npz")
    ptq = np.load(exp / results["float@32"]["evaluation"] / "per_image.npz")
    assert own.files == ptq.files and all(np.array_equal(own[k], ptq[k]) for k in own.files)
    metrics = json.loads((start / "eval" / "epoch_0001" / "metrics.json").read_text())
    assert results["float@32"]["metrics"] == {k: v for k, v in metrics.items() if k != "per_image_sha256"}
    uniform = np.load(exp / results["uniform@8"]["evaluation"] / "per_image.npz")
    assert not np.array_equal(own["dt_score"], uniform["dt_score"])


def assert_table_cells_are_the_results(table: str, results: dict) -> None:
    """Table 1's rows are float, the reference bits and the targets; each scheme's `ours`
    cell is that result's mAP (the float row: float@32 under uniform), '-' where none ran,
    and its `paper` cell the published number of that row and scheme."""
    published = yaml.safe_load((REPO / "problems" / "COCO" / "DETR" / "published.yaml").read_text())["detr_ptq"]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r[0]: dict(zip(header, r)) for r in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:])}
    assert list(rows) == ["float", "8", "4"]
    schemes = [h[:-len(" ours")] for h in header if h.endswith(" ours")]
    assert schemes == ["uniform", "loss", "output_float", "output_quant", "fisher_overall", "fisher_critical"]
    for label, row in rows.items():
        for scheme in schemes:
            key = "float@32" if label == "float" and scheme == "uniform" else f"{scheme}@{label}"
            cell = row[f"{scheme} ours"]
            if key in results:
                assert cell.startswith(f"{results[key]['metrics']['mAP']:.2f} ["), (label, scheme, cell)
            else:
                assert cell == "-", (label, scheme, cell)
            paper = published.get(label, {}).get(scheme)
            assert row[f"{scheme} paper"] == ("-" if paper is None else f"{paper:.2f}"), (label, scheme)
