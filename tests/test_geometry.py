"""PnP, augmentation warps and the WDR keypoint loss against known geometry."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from problems.SwissCube.dataset import Instance, Sample
from problems.SwissCube.generator import camera_matrix, cubesat_mesh
from problems.SwissCube.mesh import box_corners
from problems.SwissCube.Widedepth.loss import decode, object_space, sigmoid_focal
from problems.SwissCube.Widedepth.postprocess import solve_ransac
from problems.SwissCube.Widedepth.preprocess import Geometry, augmentation_matrix, project, warp

CORNERS = box_corners(cubesat_mesh())


def test_pnp_ransac_recovers_a_known_pose_despite_outliers():
    K = camera_matrix(512)
    R = Rotation.from_euler("xyz", [20, -35, 70], degrees=True).as_matrix()
    t = np.array([40.0, -25.0, 900.0])
    pts = np.tile(CORNERS, (3, 1))
    pix = project(pts, K, R, t)
    pix[[2, 11, 19]] += [[40, -30], [-25, 60], [70, 10]]  # three wild keypoints
    R_est, t_est = solve_ransac(pts, pix, K, ransac_px=3.0)
    assert np.allclose(R_est, R, atol=1e-5)
    assert np.allclose(t_est, t, atol=1e-3)


def test_warp_to_internal_K_keeps_the_pose_and_moves_pixels_consistently():
    geo = Geometry(128, camera_matrix(128), (8, 16, 32, 64, 128), (8, 16, 32, 64, 128))
    K_img = np.array([[210.0, 0, 150], [0, 205, 110], [0, 0, 1]])  # another camera
    R = Rotation.from_euler("zyx", [10, 20, 30], degrees=True).as_matrix()
    t = np.array([10.0, 5.0, 700.0])
    image = np.zeros((240, 300, 3), np.uint8)
    mask = np.zeros((240, 300), bool)
    sample = Sample(0, "x", image, K_img, [Instance(1, R, t, mask)])
    _, (inst,) = warp(sample, geo, None, {1: CORNERS})
    assert np.array_equal(inst["R"], R) and np.array_equal(inst["t"], t)
    # with augmentation the new pose projects the corners where the warp moved them
    M = augmentation_matrix(np.random.default_rng(0), 128, 0.1, 0.1, 180)
    _, (aug,) = warp(sample, geo, M, {1: CORNERS})
    H = M @ geo.K @ np.linalg.inv(K_img)
    moved = project(CORNERS, K_img, R, t)
    moved = np.c_[moved, np.ones(8)] @ H.T
    moved = moved[:, :2] / moved[:, 2:]
    assert np.abs(project(CORNERS, geo.K, aug["R"], aug["t"]) - moved).max() < 0.5


def test_object_space_loss_is_zero_for_exact_keypoints_and_grows_with_error():
    K = torch.tensor(camera_matrix(128), dtype=torch.float64)
    R = Rotation.from_euler("xyz", [5, 50, -20], degrees=True).as_matrix()
    cam = torch.tensor(CORNERS @ R.T + [0, 0, 500.0])
    pix = cam @ K.T
    pix = pix[:, :2] / pix[:, 2:]
    exact = object_space(pix[None], cam[None], torch.linalg.inv(K), 178.46)
    assert exact.item() == pytest.approx(0.0, abs=1e-12)
    off = object_space((pix + 1.0)[None], cam[None], torch.linalg.inv(K), 178.46)
    worse = object_space((pix + 3.0)[None], cam[None], torch.linalg.inv(K), 178.46)
    assert 0 < off.item() < worse.item()


def test_decode_by_hand():
    pred = torch.zeros(1, 16)
    pred[0, 0], pred[0, 8] = 0.5, -1.0   # keypoint 0: +0.5 anchors in x, -1 anchor in y
    pts = decode(pred, torch.tensor([[20.0, 30.0]]), torch.tensor([16.0]))
    assert pts[0, 0].tolist() == [28.0, 14.0]
    assert pts[0, 1].tolist() == [20.0, 30.0]


def test_focal_loss_matches_the_formula_and_ignores_label_minus_one():
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    labels = torch.tensor([1, 0, -1])
    p1, p2 = torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(-1.0))
    alpha, gamma = 0.25, 2.0
    expected = -alpha * (1 - p1) ** gamma * torch.log(p1) - (1 - alpha) * p2 ** gamma * torch.log(1 - p2)
    assert sigmoid_focal(logits, labels, gamma, alpha).item() == pytest.approx(expected.item(), rel=1e-5)
