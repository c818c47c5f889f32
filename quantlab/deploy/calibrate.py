"""Activation ranges of the float graph over calibration batches, by onnxruntime's own
calibrators.

`percentile` (the default) keeps 99.999% of a histogram of the values (onnxruntime's
HistogramCalibrater): one extreme value among millions no longer sets a tensor's step, so
the bulk of the values gets finer steps. `minmax` keeps the extreme values seen, as the
project's STE activation quantizers do, and clips nothing the calibration batches
produced. On WDR `mini` (MQAT 8-2-8) neither deployed model is told apart from the
fake-quant one: percentile -1.3 [-3.2, 1.0], minmax +1.5 [-0.8, 3.8] (docs/deployment.md).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}


class _Batches(CalibrationDataReader):
    def __init__(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def tensor_ranges(model: onnx.ModelProto, batches: Iterable[dict[str, np.ndarray]],
                  method: str = "percentile") -> dict[str, tuple[float, float]]:
    """(min, max) of every float activation tensor of `model` over `batches` (input name
    -> array)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "float.onnx"
        onnx.save(model, path)
        extra = {"percentile": 99.999, "num_bins": 2048, "symmetric": False} if method == "percentile" else {}
        calibrator = create_calibrator(path, augmented_model_path=str(Path(folder) / "augmented.onnx"),
                                       calibrate_method=METHODS[method], extra_options=extra)
        calibrator.collect_data(_Batches(batches))
        found = calibrator.compute_data()
    return {name: (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
            for name, data in found.data.items()}
