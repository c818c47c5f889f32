"""LINEMOD evaluation as ZebraPose reports it: per object, the share of test instances
whose ADD(-S) error is below k x diameter (ADI for the objects `models_info` declares
symmetric, ADD otherwise; BOP's error / diameter < k), and the mean of the per-object
accuracies (not instance-weighted). An instance without a pose (missed detection, too
few correspondences, PnP failure) fails at every threshold."""
from __future__ import annotations

import numpy as np

from problems.LINEMOD.dataset import Instance, Model
from quantlab.metrics.pose import FRACTIONS, accuracy, add_error, adi_error

MAIN = "ADD(-S)-0.1d"


def errors(prediction: dict, inst: Instance, model: Model) -> tuple[float, float]:
    """(ADD, ADI) in mm of one instance; inf when it has no pose."""
    if prediction.get("R") is None:
        return np.inf, np.inf
    args = (inst.R, inst.t, np.asarray(prediction["R"]), np.asarray(prediction["t"]))
    return add_error(model.points, *args), adi_error(model.points, *args)


def evaluate(predictions: list[dict], instances: list[Instance], models: dict[int, Model]) -> dict[str, float]:
    if [p["index"] for p in predictions] != list(range(len(instances))):
        raise ValueError("predictions do not cover the split exactly once")
    out: dict[str, float] = {}
    main = []
    for obj_id, model in models.items():
        mine = [(p, i) for p, i in zip(predictions, instances) if i.obj_id == obj_id]
        table = np.array([errors(p, i, model) for p, i in mine]).reshape(-1, 2) / model.diameter
        chosen = table[:, 1] if model.symmetric else table[:, 0]
        for k in FRACTIONS:
            out[f"ADD-{k:g}d/{model.name}"] = accuracy(table[:, 0], k)
            out[f"ADI-{k:g}d/{model.name}"] = accuracy(table[:, 1], k)
            out[f"ADD(-S)-{k:g}d/{model.name}"] = accuracy(chosen, k)
        out[f"count/{model.name}"] = len(mine)
        out[f"failed/{model.name}"] = int(np.sum(~np.isfinite(table[:, 0])))
        main.append(out[f"{MAIN}/{model.name}"])
    for k in FRACTIONS:
        out[f"ADD(-S)-{k:g}d/mean"] = float(np.mean([out[f"ADD(-S)-{k:g}d/{m.name}"] for m in models.values()]))
    return out


def table(metrics: dict[str, float], models: dict[int, Model]) -> str:
    """ADD(-S) at each k x diameter per object and their mean, with counts and failures."""
    names = [m.name for m in models.values()]
    width = max(len(n) for n in [*names, "object", "mean"])
    head = f"{'object':<{width}} {'sym':>3} {'n':>5} {'failed':>6} " + " ".join(f"{f'{k:g}d':>6}" for k in FRACTIONS)
    lines = [f"ADD(-S) accuracy (%) at k x diameter (ADI for symmetric objects)", head]
    for m in models.values():
        lines.append(f"{m.name:<{width}} {'yes' if m.symmetric else 'no':>3} {metrics[f'count/{m.name}']:>5d} "
                     f"{metrics[f'failed/{m.name}']:>6d} "
                     + " ".join(f"{metrics[f'ADD(-S)-{k:g}d/{m.name}']:>6.1f}" for k in FRACTIONS))
    lines.append(f"{'mean':<{width}} {'':>3} {'':>5} {'':>6} "
                 + " ".join(f"{metrics[f'ADD(-S)-{k:g}d/mean']:>6.1f}" for k in FRACTIONS))
    return "\n".join(lines)
