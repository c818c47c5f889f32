"""Table cells that say what is noise: a metric with its bootstrap interval over the test
images, its spread over seeds, and a mark where it differs from the table's reference.

`Evidence` reads the per-image results an evaluation stored (`eval/<tag>/per_image.npz`)
and scores every evaluation of an experiment with the same draws (`intervals.seed`), so
two evaluations of the same images give paired replicates: a change against the
reference is marked when the interval of the paired difference excludes zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantlab.metrics.bootstrap import PER_IMAGE, draws, interval

#: the random stream of the seed draws in `combine` (the images' draws follow `intervals.seed`)
SEED_DRAWS = 0


@dataclass(eq=False)
class Estimate:
    """A metric (the mean over seeds when there are several), its bootstrap replicates,
    and the replicates of its paired difference from the table's reference."""
    value: float
    level: float = 0.95
    replicates: np.ndarray | None = None
    difference: np.ndarray | None = None
    #: standard deviation over seeds (None: one seed)
    spread: float | None = None
    seeds: int = 1

    @property
    def bounds(self) -> tuple[float, float] | None:
        return None if self.replicates is None else interval(self.replicates, self.level)

    @property
    def marked(self) -> bool:
        """The paired interval of the difference from the reference excludes zero."""
        found = None if self.difference is None else interval(self.difference, self.level)
        return found is not None and (found[0] > 0 or found[1] < 0)

    def markdown(self) -> str:
        text = f"{self.value:.2f}"
        if self.spread is not None:
            text += f" ±{self.spread:.2f}"
        if self.bounds is not None:
            text += f" [{self.bounds[0]:.1f}, {self.bounds[1]:.1f}]"
        return text + ("*" if self.marked else "")


def combine(estimates: list[Estimate]) -> Estimate:
    """One cell over seeds: the mean value, the standard deviation over seeds, and replicates
    of the mean over seeds from a two-level bootstrap. Every seed holds replicates on the
    same draws of the same images; replicate b also draws the seeds with replacement and
    averages their replicate b, so the interval (and the mark) count the training's
    variation between seeds as well as the test images'. The seed draws depend only on the
    numbers of seeds and replicates, so every cell of a table uses the same ones (paired)."""
    picked = _seed_draws(len(estimates), next((len(e.replicates) for e in estimates if e.replicates is not None), 0))

    def mean(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        if any(a is None for a in arrays):
            return None
        return np.take_along_axis(np.stack(arrays, axis=1), picked, axis=1).mean(axis=1)
    values = [e.value for e in estimates]
    return Estimate(float(np.mean(values)), estimates[0].level, mean([e.replicates for e in estimates]),
                    mean([e.difference for e in estimates]),
                    float(np.std(values, ddof=1)) if len(values) > 1 else None, len(values))


def _seed_draws(seeds: int, replicates: int) -> np.ndarray:
    """[replicates, seeds] indices of the seeds each replicate draws, with replacement."""
    return np.random.default_rng(SEED_DRAWS).integers(0, seeds, size=(replicates, seeds))


class Evidence:
    """Bootstrap replicates of the evaluations in one experiment folder, by metric.

    An evaluation is named by its folder relative to the experiment (e.g.
    `children/float/eval/float`); one without per-image results (an experiment from before
    they were kept) gives its value alone."""

    def __init__(self, folder: Path, task, cfg: dict) -> None:
        self.folder, self.task = folder, task
        settings = cfg["intervals"]
        self.level, self.count, self.seed = settings["level"], settings["replicates"], settings["seed"]
        self._found: dict[str, tuple[np.ndarray, dict[str, np.ndarray]] | None] = {}

    def _replicates(self, evaluation: str | None) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        if evaluation is None:
            return None
        if evaluation not in self._found:
            path = self.folder / evaluation / PER_IMAGE
            found = None
            if path.is_file():
                with np.load(path, allow_pickle=False) as stored:
                    per_image = dict(stored)
                weights = draws(len(per_image["images"]), self.count, self.seed)
                found = (per_image["images"], self.task.resample(per_image, weights))
            self._found[evaluation] = found
        return self._found[evaluation]

    def _metric(self, evaluation: str | None, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        found = self._replicates(evaluation)
        return None if found is None or metric not in found[1] else (found[0], found[1][metric])

    def _paired(self, evaluation: str | None, reference: str | None, metric: str) -> np.ndarray | None:
        mine, theirs = self._metric(evaluation, metric), self._metric(reference, metric)
        if mine is None or theirs is None:
            return None
        if not np.array_equal(mine[0], theirs[0]):
            raise ValueError(f"{self.folder / evaluation} and {self.folder / reference} scored different test "
                             f"images: {metric} cannot be compared image by image")
        return mine[1] - theirs[1]

    def estimate(self, value: float | None, evaluation: str | None, metric: str,
                 reference: str | None = None) -> Estimate | float | None:
        """`value` with its interval, marked when it differs from `reference`'s (the bare
        value where no per-image results were kept)."""
        found = None if value is None else self._metric(evaluation, metric)
        if found is None:
            return value
        difference = None if reference in (None, evaluation) else self._paired(evaluation, reference, metric)
        return Estimate(value, self.level, found[1], difference)

    def change(self, value: float | None, evaluation: str | None, base: float | None, reference: str | None,
               metric: str) -> Estimate | float | None:
        """`value - base` with the paired interval of the difference, marked when it excludes 0."""
        if value is None or base is None:
            return None
        difference = self._paired(evaluation, reference, metric)
        return value - base if difference is None else Estimate(value - base, self.level, difference, difference)
