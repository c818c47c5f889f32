"""The paper tables from hand-made experiment files; the INQ lr multiplier and the child
run configuration worked by hand."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from problems.SwissCube.tables import DEPTH
from quantlab.engine.config import child_config
from quantlab.engine.optim import inq_multiplier
from quantlab.mqat.tables import TABLES
from quantlab.records import save_tables

MODULES = ["backbone", "fpn"]
INTERVALS = {"level": 0.95, "replicates": 1000, "seed": 0}
PUBLISHED = {"cube": [{"backbone": 32, "fpn": 32, "metric": 70.0}, {"backbone": 32, "fpn": 2, "metric": 75.0}],
             "module_bits": {"module": "fpn", "rows": {32: 70.0, 8: 69.0}},
             "compression": [{"method": "MQAT", "compression": 4.0, "metric": 74.0},
                             {"method": "MQAT", "compression": 8.0, "metric": 72.0}],
             "depth": {"float": {"near": 80.0, "all": 70.0}, "mqat": {"near": 85.0, "all": 75.0}}}


def experiment(tmp_path):
    mqat = tmp_path / "mqat"
    mqat.mkdir()
    two = {"bits": {"backbone": 32, "fpn": 2}, "metric": 50.0, "delta": -10.0}
    (mqat / "cube.json").write_text(json.dumps({"float_metric": 60.0, "cube": [two]}))
    (mqat / "result.json").write_text(json.dumps({
        "order": ["fpn", "backbone"], "float_metrics": {"A/near": 61.0, "A/all": 60.0}, "points": [
            {"budget": 4.0, "bits": {"backbone": 8, "fpn": 2}, "metric": 55.0, "compression": 7.0,
             "metrics": {"A/near": 58.0, "A/all": 55.0}},
            {"budget": 8.0, "bits": {"backbone": 4, "fpn": 2}, "metric": 51.0, "compression": 12.0,
             "metrics": {"A/near": 53.0, "A/all": 51.0}}]}))
    (mqat / "baselines.json").write_text(json.dumps({
        "float_finetune": 58.0,
        "ablation": {"module": "fpn", "rows": [{"bits": 8, "metric": 59.0, "compression": 1.5}]},
        "uniform": [{"algorithm": "lsq", "bits": 4, "metric": 40.0, "compression": 7.5}]}))
    return tmp_path


def write_tables(folder, names, published):
    """The MQAT tables of a two-module task whose metric family is `A`, as --mode mqat writes them."""
    task = SimpleNamespace(groups={m: m for m in MODULES}, best_metric="A/all", published=published)
    specs = {s.name: s for s in (*TABLES, DEPTH)}
    return save_tables(folder, [specs[n].build(folder, task, {"mqat": {"probe_bits": 2}, "intervals": INTERVALS})
                                for n in names])


def rows(tmp_path, name):
    return [line.split(",") for line in (tmp_path / "tables" / f"{name}.csv").read_text().splitlines()]


def test_tables_put_ours_beside_the_papers_numbers(tmp_path):
    folder = experiment(tmp_path)
    text = write_tables(folder, ["cube", "module_bits", "compression", "depth"], PUBLISHED)
    assert rows(folder, "cube")[1:] == [["32", "32", "60.0", "0.0", "70.0", "0.0"],
                                        ["32", "2", "50.0", "-10.0", "75.0", "5.0"]]
    assert rows(folder, "module_bits")[1:] == [["FP", "1.0", "60.0", "70.0"], ["FP fine-tuned", "1.0", "58.0", ""],
                                               ["8", "1.5", "59.0", "69.0"]]
    # one MQAT row per budget, each beside the paper's point nearest it (7x: 8x; 12x: 8x);
    # no paper point: empty; each method's difference from MQAT's first point, the one of
    # the smallest budget (bare: these records keep no per-image results)
    assert rows(folder, "compression")[1:] == [["float", "FP", "1.0", "60.0", "5.0", "", ""],
                                               ["float fine-tuned", "FP", "1.0", "58.0", "3.0", "", ""],
                                               ["LSQ uniform", "4", "7.5", "40.0", "-15.0", "", ""],
                                               ["MQAT", "8-2 (fpn > backbone)", "7.0", "55.0", "", "8.0", "72.0"],
                                               ["MQAT", "4-2 (fpn > backbone)", "12.0", "51.0", "-4.0", "8.0",
                                                "72.0"]]
    assert "- ours - MQAT: the paired difference from MQAT's point of the smallest budget (>= 4x)" in text
    # depth bins in T-A1's order (MQAT: the point of the smallest budget); bins neither side has are empty
    assert rows(folder, "depth")[0] == ["model", "source", "near", "medium", "far", "all"]
    assert rows(folder, "depth")[1:] == [["float", "ours", "61.0", "", "", "60.0"],
                                         ["float", "paper", "80.0", "", "", "70.0"],
                                         ["MQAT 8-2", "ours", "58.0", "", "", "55.0"],
                                         ["MQAT 8-2", "paper", "85.0", "", "", "75.0"]]
    assert "| LSQ uniform | 4 | 7.50 | 40.00 | -15.00 | - | - |" in text


def test_a_missing_experiment_file_leaves_cells_empty(tmp_path):
    (tmp_path / "mqat").mkdir()
    write_tables(tmp_path, ["compression"], {})
    assert rows(tmp_path, "compression")[1:] == [["float", "FP", "1.0", "", "", "", ""],
                                                 ["float fine-tuned", "FP", "1.0", "", "", "", ""]]


def test_inq_multiplier_resets_at_each_step_and_decays_two_epochs_later():
    m = inq_multiplier([0, 5, 9])
    assert [m(e) for e in range(12)] == [1, 1, 0.1, 0.1, 0.1, 1, 1, 0.1, 0.1, 1, 1, 0.1]


def test_child_training_is_laid_over_training_entry_by_entry():
    cfg = {"quantize": {"init": None, "rules": [], "child_training": {"lr": 0.5, "schedule": {"type": "inq"}}},
           "training": {"lr": 0.1, "epochs": 60, "schedule": {"type": "cosine", "warmup_epochs": 1}},
           "engine": {"select_split": "validation"}}
    child = child_config(cfg, "float.pt", [{"modules": "fpn", "algorithm": "inq", "bits": 2}], 3)
    assert child["training"] == {"lr": 0.5, "epochs": 3, "schedule": {"type": "inq", "warmup_epochs": 1}}
    assert child["quantize"]["init"] == "float.pt" and cfg["training"]["lr"] == 0.1
    # a search reads a child's last epoch: the child evaluates no selection split
    assert child["engine"]["select_split"] == "none" and cfg["engine"]["select_split"] == "validation"


def test_the_compression_figure_draws_the_tables_cells_and_every_paper_point(tmp_path):
    """T-A4 as a figure: our MQAT points at 7x and 12x joined, with their intervals as error
    bars; LSQ's one point; the paper's two MQAT points dashed; float as a horizontal line."""
    import matplotlib.pyplot as plt
    from quantlab.metrics.intervals import Estimate
    from quantlab.mqat.figures import draw
    from quantlab.records import Table
    table = Table("compression", "t", ["method", "bits", "compression", "ours"], [
        ["float", "FP", 1.0, Estimate(60.0, replicates=np.array([58.0, 62.0]))],
        ["LSQ uniform", "4", 7.5, Estimate(40.0, replicates=np.array([37.0, 43.0]))],
        ["MQAT", "8-2", 7.0, Estimate(55.0, replicates=np.array([52.0, 58.0]))],
        ["MQAT", "4-2", "11.00 / 13.00", 51.0]])  # over seeds: each seed's compression, drawn at their mean
    fig, ax = plt.subplots()
    draw(ax, table, PUBLISHED, "A/all")
    lines = {line.get_label(): line for line in ax.get_lines()}
    bars = {c.get_label(): c for c in ax.containers}
    mqat = bars["MQAT (ours)"].lines[0]
    assert list(mqat.get_xdata()) == [7.0, 12.0] and list(mqat.get_ydata()) == [55.0, 51.0]
    assert list(bars["LSQ uniform (ours)"].lines[0].get_xdata()) == [7.5] and "HAWQ-V3 (ours)" not in bars
    assert list(lines["MQAT (paper)"].get_xdata()) == [4.0, 8.0] and lines["MQAT (paper)"].get_linestyle() == "--"
    segments = bars["MQAT (ours)"].lines[2][0].get_segments()
    # interval [51.1, 57.9] (the 2.5th / 97.5th percentiles of 52 and 58); a bare value has none
    assert segments[0][:, 1] == pytest.approx([52.15, 57.85]) and segments[1][0, 1] == segments[1][1, 1] == 51.0
    assert lines["float (ours)"].get_ydata()[0] == 60.0
    plt.close(fig)


def test_detr_fisher_table_orders_schemes_and_measures_changes_against_float(tmp_path):
    from problems.COCO.DETR.tables import detr_fisher
    (tmp_path / "fisher").mkdir()
    (tmp_path / "fisher" / "allocations.json").write_text(json.dumps(
        {"float": {"bits": {}, "average_bits": 32.0, "metrics": {"mAP": 40.0, "critical_mAP": 30.0}}}))
    results = {f"{s}@{w:g}": {"scheme": s, "regularizer": w, "average_bits": 4.0,
                              "metrics": {"mAP": m, "critical_mAP": c}}
               for s, w, m, c in [("fisher_critical", 0.01, 38.5, 31.0), ("uniform", 0.0, 35.0, 25.0),
                                  ("fisher_critical", 0.0, 37.0, 28.0), ("uniform", 0.01, 36.0, 26.5)]}
    results["fisher_critical@0"]["same_as"] = "fisher_overall"
    (tmp_path / "fisher" / "results.json").write_text(json.dumps(results))
    task = SimpleNamespace(best_metric="mAP", critical_metric="critical_mAP")
    table = detr_fisher(tmp_path, task, {"fisher": {"schemes": ["uniform", "fisher_overall", "fisher_critical"]},
                                         "intervals": INTERVALS})
    assert table.rows == [["float", None, 32.0, 40.0, 30.0, None, None, None],
                          ["uniform", "0", 4.0, 35.0, 25.0, -5.0, -5.0, None],
                          ["uniform", "0.01", 4.0, 36.0, 26.5, -4.0, -3.5, None],
                          ["fisher_critical", "0", 4.0, 37.0, 28.0, -3.0, -2.0, "fisher_overall"],
                          ["fisher_critical", "0.01", 4.0, 38.5, 31.0, -1.5, 1.0, None]]


def test_notes_over_seeds_keep_a_shared_note_once_and_say_which_seed_run_a_note_is_from():
    from quantlab.records import Table, over_seeds
    tables = [Table("t", "t", ["a"], [[1.0]], ["shared", "seven negative"]),
              Table("t", "t", ["a"], [[1.0]], ["shared", "three negative"])]
    assert over_seeds(tables).notes == ["shared", "(seed run 1 of 2) seven negative", "(seed run 2 of 2) three negative"]
