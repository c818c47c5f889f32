"""LINEMOD evaluation as ZebraPose reports it: per object, the share of test instances
whose ADD(-S) error is below k x diameter (ADI for the objects `models_info` declares
symmetric, ADD otherwise; BOP's error / diameter < k), and the mean of the per-object
accuracies (not instance-weighted). An instance without a pose (missed detection, too
few correspondences, PnP failure) fails at every threshold."""
from __future__ import annotations

import numpy as np

from problems.LINEMOD.dataset import Instance, Model
from quantlab.metrics.bootstrap import PerImage, Scored, rates
from quantlab.metrics.pose import FRACTIONS, add_error, adi_error

MAIN = "ADD(-S)-0.1d"


def errors(prediction: dict, inst: Instance, model: Model) -> tuple[float, float]:
    """(ADD, ADI) in mm of one instance; inf when it has no pose."""
    if prediction.get("R") is None:
        return np.inf, np.inf
    args = (inst.R, inst.t, np.asarray(prediction["R"]), np.asarray(prediction["t"]))
    return add_error(model.points, *args), adi_error(model.points, *args)


def evaluate(predictions: list[dict], instances: list[Instance], models: dict[int, Model]) -> Scored:
    """The accuracies (`resample` with every instance once), instance counts and failures,
    and the per-instance errors behind them; the bootstrap draws instances (an image is scored per object)."""
    if [p["index"] for p in predictions] != list(range(len(instances))):
        raise ValueError("predictions do not cover the split exactly once")
    position = {obj_id: i for i, obj_id in enumerate(models)}
    found = np.array([errors(p, i, models[i.obj_id]) for p, i in zip(predictions, instances)]).reshape(-1, 2)
    columns = {"images": np.arange(len(instances), dtype=np.int64),
               "object": np.array([position[i.obj_id] for i in instances], dtype=np.int64),
               "ADD": found[:, 0], "ADI": found[:, 1],
               "names": np.array([m.name for m in models.values()]),
               "diameter": np.array([m.diameter for m in models.values()], dtype=np.float64),
               "symmetric": np.array([m.symmetric for m in models.values()], dtype=bool)}
    out: dict[str, float] = {k: float(v[0]) for k, v in resample(columns, np.ones((1, len(instances)))).items()}
    for k, name in enumerate(columns["names"]):
        mine = columns["object"] == k
        out[f"count/{name}"] = int(mine.sum())
        out[f"failed/{name}"] = int(np.sum(~np.isfinite(columns["ADD"][mine])))
    return Scored(out, columns)


def resample(columns: PerImage, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per object, the weighted share of its instances below k x diameter (ADD, ADI, and
    ADD(-S): ADI for the symmetric objects), then the mean over objects of ADD(-S), each
    instance counted as `weights` [B, instances] says (nan for an object none is drawn of)."""
    out: dict[str, np.ndarray] = {}
    for k, name in enumerate(columns["names"]):
        mine = weights * (columns["object"] == k)
        relative = {m: columns[m] / columns["diameter"][k] for m in ("ADD", "ADI")}
        chosen = relative["ADI"] if columns["symmetric"][k] else relative["ADD"]
        for f in FRACTIONS:
            out[f"ADD-{f:g}d/{name}"] = rates(relative["ADD"] < f, mine)
            out[f"ADI-{f:g}d/{name}"] = rates(relative["ADI"] < f, mine)
            out[f"ADD(-S)-{f:g}d/{name}"] = rates(chosen < f, mine)
    for f in FRACTIONS:
        out[f"ADD(-S)-{f:g}d/mean"] = np.mean([out[f"ADD(-S)-{f:g}d/{n}"] for n in columns["names"]], axis=0)
    return out


def table(metrics: dict[str, float], models: dict[int, Model]) -> str:
    """ADD(-S) at each k x diameter per object and their mean, with counts and failures."""
    names = [m.name for m in models.values()]
    width = max(len(n) for n in [*names, "object", "mean"])
    head = f"{'object':<{width}} {'sym':>3} {'n':>5} {'failed':>6} " + " ".join(f"{f'{k:g}d':>6}" for k in FRACTIONS)
    lines = ["ADD(-S) accuracy (%) at k x diameter (ADI for symmetric objects)", head]
    for m in models.values():
        lines.append(f"{m.name:<{width}} {'yes' if m.symmetric else 'no':>3} {metrics[f'count/{m.name}']:>5d} "
                     f"{metrics[f'failed/{m.name}']:>6d} "
                     + " ".join(f"{metrics[f'ADD(-S)-{k:g}d/{m.name}']:>6.1f}" for k in FRACTIONS))
    lines.append(f"{'mean':<{width}} {'':>3} {'':>5} {'':>6} "
                 + " ".join(f"{metrics[f'ADD(-S)-{k:g}d/mean']:>6.1f}" for k in FRACTIONS))
    return "\n".join(lines)
