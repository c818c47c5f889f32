"""Pose metrics against hand-worked cases."""
import math

import numpy as np
import pytest

from quantlab.metrics.pose import (PoseRecord, add_error, adi_error, depth_bin_edges, depth_bin_index,
                                   rep_error, summarize)

I = np.eye(3)
RZ180 = np.diag([-1.0, -1.0, 1.0])


def test_add_translation_is_the_offset():
    pts = np.array([[1.0, 0, 0], [0, 2, 0], [0, 0, 3]])
    assert add_error(pts, I, [0, 0, 10], I, [3, 4, 10]) == pytest.approx(5.0)


def test_adi_forgives_a_symmetry_that_add_does_not():
    # two points symmetric about the z axis: a 180 degree turn about z swaps them
    pts = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
    assert add_error(pts, I, [0, 0, 5], RZ180, [0, 0, 5]) == pytest.approx(2.0)
    assert adi_error(pts, I, [0, 0, 5], RZ180, [0, 0, 5]) == pytest.approx(0.0)


def test_adi_nearest_point_by_hand():
    pts = np.array([[0.0, 0, 0], [10.0, 0, 0]])
    # estimate shifted by 3 along x: gt (0,0,0) is nearest to est (3,0,0): 3; gt (10,0,0) nearest to (13,0,0): 3
    assert adi_error(pts, I, [0, 0, 0], I, [3, 0, 0]) == pytest.approx(3.0)
    # shifted by 7: gt (0) -> est (7): 7, gt (10) -> est (7): 3; mean 5 (ADD would say 7)
    assert adi_error(pts, I, [0, 0, 0], I, [7, 0, 0]) == pytest.approx(5.0)
    assert add_error(pts, I, [0, 0, 0], I, [7, 0, 0]) == pytest.approx(7.0)


def test_rep_error_pixels():
    K = np.array([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]])
    pts = np.zeros((1, 3))
    # point at depth 1000 moved 20 mm sideways: 100 * 20 / 1000 = 2 px
    assert rep_error(pts, K, I, [0, 0, 1000], I, [20, 0, 1000]) == pytest.approx(2.0)


def test_depth_bins_are_the_official_wdr_bins():
    """The official evaluation: depth_max += 1e-5, width = (max - min) / 3, bin =
    int((d - min) / width). 200 and 300, on the inner edges of the bins without the margin,
    fall in the lower bin (200 / 100.0000033 < 1); the maximum in the last."""
    depths = np.array([100.0, 400, 250, 199.99, 200, 300, 399.999])
    edges = depth_bin_edges(depths)
    assert edges == pytest.approx([100, 200 + 1e-5 / 3, 300 + 2e-5 / 3, 400 + 1e-5], abs=1e-9)
    assert depth_bin_index(depths, edges).tolist() == [0, 2, 1, 0, 0, 1, 2]
    # the official loop, as written there, on the same depths
    low, high = min(depths), max(depths) + 1e-5
    width = (high - low) / 3
    assert depth_bin_index(depths, edges).tolist() == [int((float(d) - low) / width) for d in depths]


def test_summary_counts_misses_as_failures_at_every_threshold():
    d = 100.0
    recs = [PoseRecord(100, 4.0, 4.0, 1.0),        # near: within 0.05d (5) for ADD
            PoseRecord(200, 8.0, 3.0, 3.0),        # medium: ADD in 0.1d, ADI in 0.05d
            PoseRecord(300, math.inf, math.inf, math.inf)]  # far: missed
    m = summarize(recs, d).metrics
    assert m["missed"] == 1
    assert m["count/near"] == m["count/medium"] == m["count/far"] == 1
    assert m["ADD-0.05d/all"] == pytest.approx(100 / 3)
    assert m["ADD-0.1d/all"] == pytest.approx(200 / 3)
    assert m["ADI-0.05d/all"] == pytest.approx(200 / 3)
    assert m["ADI-0.5d/far"] == 0.0
    assert m["REP-2px/all"] == pytest.approx(100 / 3)
    assert m["REP-20px/far"] == 0.0
    assert m["ADD-0.1d/medium"] == 100.0


def test_thresholds_compare_error_over_diameter_as_the_bop_toolkit_does():
    """bop_toolkit's match_poses: error / diameter < threshold. With SwissCube's diameter an
    error of exactly 0.1 d in decimal (17.846 mm) is a success there: 17.846 / 178.46 is
    just below 0.1 in floating point, while 17.846 < 0.1 x 178.46 is false."""
    diameter, error = 178.46, 17.846
    assert error / diameter < 0.1 and not error < 0.1 * diameter
    metrics = summarize([PoseRecord(500.0, error, error, 1.0)], diameter).metrics
    assert metrics["ADD-0.1d/all"] == 100.0 and metrics["ADI-0.1d/all"] == 100.0
    assert metrics["ADD-0.05d/all"] == 0.0


def test_the_depth_figure_orders_thresholds_as_numbers():
    from problems.SwissCube.evaluation import curves
    keys = ["REP-10px", "REP-2px", "REP-5px", "ADI-0.5d", "ADI-0.1d", "ADI-0.3d", "ADD-0.1d"]
    metrics = {f"{k}/near": 0.0 for k in keys} | {"REP-2px/all": 0.0, "count/near": 3}
    assert curves(metrics) == ["ADI-0.1d", "ADI-0.3d", "ADI-0.5d", "REP-2px", "REP-5px", "REP-10px"]
