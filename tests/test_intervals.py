"""Bootstrap intervals over test images: hand-made per-image results whose intervals are
known, paired against unpaired differences, resampling against literally repeated test
sets, and the tables rendered from hand-made experiment files."""
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import norm

from problems.LINEMOD import evaluation as linemod
from problems.LINEMOD.dataset import Instance, Model
from quantlab.metrics import pose
from quantlab.metrics.bootstrap import DIGEST_KEY, PER_IMAGE, draws, interval, rates
from quantlab.metrics.intervals import Estimate
from quantlab.mqat.tables import TABLES
from quantlab.records import over_seeds

LEVEL = 0.95
INTERVALS = {"level": LEVEL, "replicates": 4000, "seed": 0}


def replicate_rates(passed, seed=0, replicates=4000):
    """Bootstrap replicates of the success rate of one instance per image."""
    passed = np.asarray(passed, bool)
    return rates(passed, draws(passed.size, replicates, seed))


def test_all_correct_and_all_wrong_have_degenerate_intervals():
    assert interval(replicate_rates([True] * 50), LEVEL) == (100.0, 100.0)
    assert interval(replicate_rates([False] * 50), LEVEL) == (0.0, 0.0)


def test_a_fifty_fifty_split_has_the_binomial_interval():
    """n = 400, p = 0.5: the normal approximation of the binomial, 50 +- 1.96 x 2.5 points."""
    low, high = interval(replicate_rates([True, False] * 200), LEVEL)
    half = norm.ppf(0.975) * 100 * np.sqrt(0.25 / 400)
    assert low == pytest.approx(50 - half, abs=0.6) and high == pytest.approx(50 + half, abs=0.6)


def test_undefined_replicates_are_left_out_and_none_when_all_are():
    assert interval(np.array([np.nan, 1.0, 1.0]), LEVEL) == (1.0, 1.0)
    assert interval(np.array([np.nan, np.nan]), LEVEL) is None


def test_paired_differences_see_what_unpaired_ones_cannot():
    """Method A is right on images 0-59, B on 0-54 (a subset): B is worse on 5 images and
    never better. Paired on the same draws, the difference's interval excludes 0 (none of
    the 5 drawn: 0.95^100 = 0.6%); unpaired, the two rates' own spreads (about 5 points
    each) swamp the 5-point difference."""
    a, b = np.arange(100) < 60, np.arange(100) < 55
    paired = interval(replicate_rates(a) - replicate_rates(b), LEVEL)
    unpaired = interval(replicate_rates(a, seed=1) - replicate_rates(b, seed=2), LEVEL)
    assert 0 < paired[0] < 5 < paired[1] < 12
    assert unpaired[0] < -5 and unpaired[1] > 15


def records(depths, errors, images):
    return [pose.PoseRecord(d, e, e / 2, e * 3, i) for d, e, i in zip(depths, errors, images)]


def test_pose_resampling_equals_scoring_the_repeated_test_set():
    """Weights [2, 0, 1, 3] score like a test set where image 0 appears twice, image 1 not
    at all, image 3 three times (the extreme depths sit in kept images, so both sets have
    the same depth bins)."""
    rng = np.random.default_rng(3)
    images = [0, 0, 1, 2, 2, 3]
    depths = [100.0, 350, 250, 400, 180, 300]
    errors = list(rng.uniform(0, 30, 6))
    errors[2] = np.inf
    found = pose.summarize(records(depths, errors, images), 100.0)
    weights = np.array([2, 0, 1, 3])
    repeated = [r for r in records(depths, errors, images) for _ in range(weights[r.image])]
    expected = pose.summarize(repeated, 100.0).metrics
    again = pose.resample(found.per_image, weights[None].astype(float))
    assert set(again) < set(expected)
    assert all(again[k][0] == pytest.approx(expected[k], nan_ok=True) for k in again)


def test_linemod_resampling_equals_scoring_the_repeated_test_set():
    """Two objects (one symmetric), one instance per image; image weights repeat them."""
    rng = np.random.default_rng(4)
    points = rng.uniform(-40, 40, (50, 3))
    models = {1: Model(1, "ape", points, 100.0, False, points, 4), 5: Model(5, "eggbox", points, 120.0, True, points, 4)}
    obj_ids, predictions, instances = [1, 1, 1, 5, 5, 5, 5], [], []
    for index, obj in enumerate(obj_ids):
        t = np.array([0.0, 0.0, 800.0])
        instances.append(Instance("test", 1, index, 0, obj, np.eye(3), t, np.eye(3), (0, 0, 1, 1), 1.0))
        shift = rng.uniform(0, 15, 3) if index != 4 else None
        predictions.append({"index": index, "R": None if shift is None else np.eye(3),
                            "t": None if shift is None else t + shift})
    found = linemod.evaluate(predictions, instances, models)
    weights = np.array([1, 3, 0, 2, 1, 0, 2])
    order = [i for i in range(len(instances)) for _ in range(weights[i])]
    expected = linemod.evaluate([dict(predictions[i], index=k) for k, i in enumerate(order)],
                                [instances[i] for i in order], models).metrics
    again = linemod.resample(found.per_image, weights[None].astype(float))
    assert all(again[k][0] == pytest.approx(expected[k]) for k in again)


# ------------------------------------------------------------------- tables from files

def write_evaluation(folder, name, passed):
    """An evaluation of 100 one-instance images whose ADI-0.1d succeeds where `passed`."""
    passed = np.asarray(passed, bool)
    recs = records(np.linspace(300, 1200, passed.size), np.where(passed, 1.0, 50.0), range(passed.size))
    path = folder / name / PER_IMAGE
    path.parent.mkdir(parents=True)
    scored = pose.summarize(recs, 100.0)
    np.savez(path, **scored.per_image)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # the pair as Logbook.write_metrics writes it
    (path.parent / "metrics.json").write_text(json.dumps({**scored.metrics, DIGEST_KEY: digest}))
    return name


def experiment(folder, mqat_right: int):
    """float right on images 0-59, fine-tuned float on all, LSQ on 0-57, MQAT on 0-(n-1)."""
    image = np.arange(100)
    ev = {name: write_evaluation(folder, f"children/{name}/eval/last", image < n)
          for name, n in (("float", 60), ("finetune", 100), ("lsq", 58), ("mqat", mqat_right))}
    mqat = folder / "mqat"
    mqat.mkdir()
    (mqat / "cube.json").write_text(json.dumps({"float_metric": 60.0, "cube": [], "float_evaluation": ev["float"]}))
    (mqat / "result.json").write_text(json.dumps({
        "order": ["fpn", "backbone"], "float_evaluation": ev["float"], "points": [
            {"budget": 4.0, "bits": {"backbone": 8, "fpn": 2}, "metric": float(mqat_right), "compression": 7.0,
             "evaluation": ev["mqat"]}]}))
    (mqat / "baselines.json").write_text(json.dumps({
        "float_finetune": 100.0, "float_finetune_evaluation": ev["finetune"],
        "uniform": [{"algorithm": "lsq", "bits": 4, "metric": 58.0, "compression": 7.5, "evaluation": ev["lsq"]}]}))
    return folder


def compression(folder):
    task = SimpleNamespace(groups={"backbone": "", "fpn": ""}, best_metric="ADI-0.1d/all", published={},
                           resample=pose.resample)
    spec = next(t for t in TABLES if t.name == "compression")
    return spec.build(folder, task, {"mqat": {"probe_bits": 2}, "intervals": INTERVALS})


def test_a_table_shows_intervals_and_marks_the_differences_that_are_real(tmp_path):
    table = compression(experiment(tmp_path, 30))
    ours = {row[0]: row[3] for row in table.rows}
    versus = {row[0]: row[4] for row in table.rows}
    assert all(isinstance(v, Estimate) for v in ours.values())
    # the float row has its interval and no mark (it is the reference)
    assert ours["float"].bounds[0] == pytest.approx(60 - 9.6, abs=1.2) and not ours["float"].marked
    # right on every image: a degenerate interval, marked (40 points above float on the same images)
    assert ours["float fine-tuned"].bounds == (100.0, 100.0) and ours["float fine-tuned"].marked
    # 2 images worse than float: an unlucky draw misses both (0.98^100 = 13%): not marked
    assert not ours["LSQ uniform"].marked
    # 30 images worse: marked; its interval is the binomial one around 30
    assert ours["MQAT"].marked and ours["MQAT"].bounds[1] == pytest.approx(30 + 9.0, abs=1.2)
    # each method against MQAT, paired: LSQ is 28 points above on 28 images, fine-tuning 70
    assert versus["LSQ uniform"].value == 28.0 and versus["LSQ uniform"].marked and versus["MQAT"] is None
    assert versus["float fine-tuned"].bounds == pytest.approx((70 - 9.0, 70 + 9.0), abs=1.2)
    text = table.markdown()
    assert "| MQAT | 8-2 (fpn > backbone) | 7.00 | 30.00 [" in text and "]* | - | - | - |" in text
    assert "95% bootstrap interval over the test images" in text
    header = table.csv().splitlines()[0].split(",")
    assert header[3:9] == ["ours", "ours low", "ours high", "ours marked", "ours sd", "ours seeds"]


def test_seeds_show_mean_and_spread_beside_the_interval_of_the_mean(tmp_path):
    """Two seeds whose MQAT is right on 30 and 40 images: mean 35, standard deviation
    7.07. Each replicate of the mean draws the seeds with replacement too: seed 0 twice,
    seed 1 twice, or one of each (the replicate-wise mean on the same image draws), each
    in about a quarter, a quarter and half of the replicates."""
    tables = [compression(experiment(tmp_path / f"seed{s}", n)) for s, n in ((0, 30), (1, 40))]
    both = over_seeds(tables)
    mqat = next(row for row in both.rows if row[0] == "MQAT")[3]
    assert mqat.value == 35.0 and mqat.spread == pytest.approx(np.sqrt(50)) and mqat.seeds == 2
    alone = [next(row for row in t.rows if row[0] == "MQAT")[3].replicates for t in tables]
    choices = np.stack([alone[0], alone[1], (alone[0] + alone[1]) / 2])
    which = np.argmax(np.isclose(mqat.replicates, choices), axis=0)
    assert np.isclose(mqat.replicates, choices[which, np.arange(len(which))]).all()
    shares = np.bincount(which, minlength=3) / len(which)
    assert shares == pytest.approx([0.25, 0.25, 0.5], abs=0.05)
    # the seeds' gap of 10 points widens the interval beyond the images' alone: a mixture of
    # centres 30 / 35 / 40 (1:2:1, sd 3.5) around the images' sd of about 4.8 (binomial,
    # 100 images) has sd 5.9, so each bound moves out by about 1.96 x (5.9 - 4.8) = 2.2
    low, high = mqat.bounds
    paired_low, paired_high = interval((alone[0] + alone[1]) / 2, 0.95)
    assert paired_low - 3.5 < low < paired_low - 1 and paired_high + 1 < high < paired_high + 3.5
    # the float row is shared by the seeds: resampling them leaves it as it is
    float_row = [next(row for row in t.rows if row[0] == "float")[3] for t in (*tables, both)]
    assert np.array_equal(float_row[2].replicates, float_row[0].replicates) and float_row[2].spread == 0.0
    assert "35.00 ±7.07 [" in both.markdown() and "mean over 2 seeds" in both.markdown()


def test_a_search_runs_once_per_seed_in_its_own_folder_and_the_tables_combine_the_seeds(tmp_path):
    """`execute` runs a search mode once per seed (`seeds/seed<s>/`, `seed: s`), then writes
    the tables over the seeds; a mode without child runs refuses seeds."""
    import torch

    from quantlab.engine.context import RunContext
    from quantlab.engine.distributed import World
    from quantlab.engine.logbook import Logbook
    from quantlab.errors import ConfigError
    from quantlab.modes import Mode, execute

    def search(ctx):
        experiment(ctx.logbook.root, {3: 30, 7: 40}[ctx.cfg["seed"]])
        assert ctx.cfg["seeds"] == []

    task = SimpleNamespace(groups={"backbone": "", "fpn": ""}, best_metric="ADI-0.1d/all", published={},
                           resample=pose.resample, tables=())
    cfg = {"seed": 0, "seeds": [3, 7], "mqat": {"probe_bits": 2}, "intervals": INTERVALS}
    ctx = RunContext(task, cfg, World(0, 1, 0, 1), Logbook(tmp_path, "P", "T", 0, writer=True), torch.device("cpu"))
    execute(Mode("search", "", search, children=True), ctx)
    root = tmp_path / "P" / "T" / "exp0000"
    assert (root / "seeds" / "seed3" / "mqat" / "result.json").is_file()
    text = (root / "tables" / "compression.md").read_text()
    assert "| MQAT | 8-2 (fpn > backbone) | 7.00 | 35.00 ±7.07 [" in text
    with pytest.raises(ConfigError, match="seeds"):
        execute(Mode("once", "", search), ctx)


# ------------------------------------------------- a table never pairs files that disagree

def test_a_per_image_file_from_another_evaluation_is_refused_naming_the_evaluation(tmp_path):
    """A run killed between the two writes of an evaluation leaves the new per_image.npz beside
    the old metrics.json: the digest metrics.json records no longer matches, and the table
    refuses the pair instead of showing an interval that excludes its own value."""
    from quantlab.errors import ExperimentError
    folder = experiment(tmp_path, 30)
    mqat = folder / "children" / "mqat" / "eval" / "last"
    (mqat / PER_IMAGE).write_bytes((folder / "children" / "finetune" / "eval" / "last" / PER_IMAGE).read_bytes())
    with pytest.raises(ExperimentError, match="children/mqat/eval/last: per_image.npz is not the file its metrics.json"):
        compression(folder)


def test_a_recorded_value_its_per_image_results_do_not_score_is_refused(tmp_path):
    """The ledger says MQAT scored 0.0, its (self-consistent) evaluation scores 30: before,
    the cell read `0.00 [21.0, 39.0]*`, an interval that excludes its own value."""
    from quantlab.errors import ExperimentError
    folder = experiment(tmp_path, 30)
    result = json.loads((folder / "mqat" / "result.json").read_text())
    result["points"][0]["metric"] = 0.0
    (folder / "mqat" / "result.json").write_text(json.dumps(result))
    with pytest.raises(ExperimentError, match=r"children/mqat/eval/last: ADI-0.1d/all is recorded as 0, but its "
                                              r"per_image.npz scores 30"):
        compression(folder)


@pytest.mark.parametrize("damage", ["truncated", "foreign", "no metrics.json"])
def test_a_damaged_or_foreign_per_image_file_is_one_error_naming_it(tmp_path, damage):
    from quantlab.errors import ExperimentError
    folder = experiment(tmp_path, 30)
    evaluation = folder / "children" / "lsq" / "eval" / "last"
    path = evaluation / PER_IMAGE
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "foreign":
        np.savez(path, weights=np.ones(3))
    else:
        (evaluation / "metrics.json").unlink()
    if damage != "no metrics.json":  # the file of another program, recorded as the pair: read, then refused
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (evaluation / "metrics.json").write_text(json.dumps({DIGEST_KEY: digest}))
    expected = "without its metrics.json" if damage == "no metrics.json" else "not a per-image result of this task"
    with pytest.raises(ExperimentError, match=f"children/lsq/eval/last.*{expected}"):
        compression(folder)
