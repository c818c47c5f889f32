"""Table cells that say what is noise: a metric with its bootstrap interval over the test
images, its spread over seeds, and a mark where it differs from the table's reference.

`Evidence` reads the per-image results an evaluation stored (`eval/<tag>/per_image.npz`)
and scores every evaluation of an experiment with the same draws (`intervals.seed`), so
two evaluations of the same images give paired replicates: a change against the
reference is marked when the interval of the paired difference excludes zero.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantlab.errors import ExperimentError
from quantlab.metrics.bootstrap import DIGEST_KEY, PER_IMAGE, draws, interval

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
    they were kept) gives its value alone. Its per_image.npz must be the one its
    metrics.json was written with (the digest metrics.json records), and must score the
    value the table shows: a pair that disagrees (a run killed between the two writes, a
    file copied over) is a one-line error naming the evaluation, never a cell."""

    def __init__(self, folder: Path, task, cfg: dict) -> None:
        self.folder, self.task = folder, task
        settings = cfg["intervals"]
        self.level, self.count, self.seed = settings["level"], settings["replicates"], settings["seed"]
        self._found: dict[str, Scores | None] = {}

    def _replicates(self, evaluation: str | None) -> "Scores | None":
        if evaluation is None:
            return None
        if evaluation not in self._found:
            self._found[evaluation] = self._read(self.folder / evaluation)
        return self._found[evaluation]

    def _read(self, folder: Path) -> "Scores | None":
        path = folder / PER_IMAGE
        if not path.is_file():
            return None
        data = path.read_bytes()
        recorded = _recorded_digest(folder)
        if recorded is not None and recorded != hashlib.sha256(data).hexdigest():
            raise ExperimentError(f"{folder}: {PER_IMAGE} is not the file its metrics.json was written with (the "
                                  "evaluation was interrupted between its two files, or one was replaced); "
                                  "evaluate it again")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                per_image = dict(stored)
            images = per_image["images"]
            unit = self.task.resample(per_image, np.ones((1, len(images))))
            replicates = self.task.resample(per_image, draws(len(images), self.count, self.seed))
        except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile) as exc:
            raise ExperimentError(f"{path}: not a per-image result of this task ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); evaluate it again") from None
        return Scores(images, replicates, {k: float(v[0]) for k, v in unit.items()})

    def _metric(self, evaluation: str | None, metric: str, value: float | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The images and replicates of `metric` in `evaluation`, after checking that its
        per-image results score `value` (what the table shows for it)."""
        found = self._replicates(evaluation)
        if found is None or metric not in found.replicates:
            return None
        scored = found.unit[metric]
        if value is not None and not (math.isclose(value, scored, abs_tol=1e-6) or
                                      (math.isnan(value) and math.isnan(scored))):
            raise ExperimentError(f"{self.folder / evaluation}: {metric} is recorded as {value:g}, but its "
                                  f"{PER_IMAGE} scores {scored:g}: the records disagree; evaluate it again")
        return found.images, found.replicates[metric]

    def _paired(self, evaluation: str | None, value: float | None, reference: str | None, base: float | None,
                metric: str) -> np.ndarray | None:
        mine, theirs = self._metric(evaluation, metric, value), self._metric(reference, metric, base)
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
        found = None if value is None else self._metric(evaluation, metric, value)
        if found is None:
            return value
        difference = None if reference in (None, evaluation) else self._paired(evaluation, value, reference, None,
                                                                                 metric)
        return Estimate(value, self.level, found[1], difference)

    def change(self, value: float | None, evaluation: str | None, base: float | None, reference: str | None,
               metric: str) -> Estimate | float | None:
        """`value - base` with the paired interval of the difference, marked when it excludes 0."""
        if value is None or base is None:
            return None
        difference = self._paired(evaluation, value, reference, base, metric)
        return value - base if difference is None else Estimate(value - base, self.level, difference, difference)


@dataclass(frozen=True)
class Scores:
    """One evaluation's per-image results scored: its test images, the bootstrap
    replicates of every metric, and every metric at unit weights (its own value)."""
    images: np.ndarray
    replicates: dict[str, np.ndarray]
    unit: dict[str, float]


def _recorded_digest(folder: Path) -> str | None:
    """The digest of per_image.npz that folder's metrics.json records (None for an
    evaluation from before digests were kept); a missing metrics.json is an error: the
    evaluation stopped between its two writes."""
    path = folder / "metrics.json"
    if not path.is_file():
        raise ExperimentError(f"{folder}: {PER_IMAGE} without its metrics.json (the evaluation was interrupted "
                              "between its two files); evaluate it again")
    try:
        return json.loads(path.read_text()).get(DIGEST_KEY)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ExperimentError(f"{path}: damaged record, not a JSON object ({exc})") from None
