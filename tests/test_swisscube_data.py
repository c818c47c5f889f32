"""The generator writes the real SwissCube layout and the loader reads it back consistently."""
import json

import cv2
import numpy as np
import pytest

from problems.SwissCube.dataset import SwissCube
from problems.SwissCube.generator import DIAMETER, cubesat_mesh
from problems.SwissCube.mesh import read_ply
from problems.SwissCube.Widedepth.preprocess import project
from quantlab.errors import DataError


def test_mesh_is_closed_outward_and_has_swisscube_diameter():
    mesh = cubesat_mesh()
    tri = mesh.vertices[mesh.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((normals * tri.mean(1)).sum(1) > 0).all()  # centred convex box: outward = away from 0
    assert mesh.diameter() == pytest.approx(DIAMETER)


def test_layout_on_disk(tiny_root):
    for name in ("training.txt", "validation.txt", "testing.txt", "swisscube_bbox.json",
                 "models/obj_000001.ply"):
        assert (tiny_root / name).is_file(), name
    first = (tiny_root / "training.txt").read_text().split()[0]
    seq, rgb, image = first.split("/")
    assert rgb == "rgb" and image.endswith(".png")
    gt = json.loads((tiny_root / seq / "scene_gt.json").read_text())
    ann = gt["0"][0]
    assert len(ann["cam_R_m2c"]) == 9 and len(ann["cam_t_m2c"]) == 3 and ann["obj_id"] == 1
    assert (tiny_root / seq / "mask_visib" / "000000_000000.png").is_file()
    boxes = json.loads((tiny_root / "swisscube_bbox.json").read_text())
    assert np.asarray(boxes).shape == (1, 8, 3)


def test_loader_reads_what_the_generator_wrote(tiny_root):
    data = SwissCube(tiny_root)
    assert data.obj_ids == [1]
    assert read_ply(tiny_root / "models/obj_000001.ply").diameter() == pytest.approx(DIAMETER, rel=1e-5)
    paths = data.split("test")
    assert len(paths) == 12
    for i, path in enumerate(paths[:6]):
        s = data.load(path, i)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        (inst,) = s.instances
        assert np.allclose(inst.R @ inst.R.T, np.eye(3), atol=1e-6)
        # the visible mask is the projected box: mask centroid near the projected centre
        # and (nearly) all mask pixels inside the projected corners' convex hull
        hull = cv2.convexHull(project(data.corners[1], s.K, inst.R, inst.t).astype(np.float32))
        ys, xs = np.nonzero(inst.mask)
        inside = [cv2.pointPolygonTest(hull, (float(x), float(y)), True) > -1.0 for x, y in zip(xs, ys)]
        assert np.mean(inside) > 0.98
        centre = project(np.zeros((1, 3)), s.K, inst.R, inst.t)[0]
        if 4 < centre[0] < 60 and 4 < centre[1] < 60:
            assert np.hypot(xs.mean() - centre[0], ys.mean() - centre[1]) < 4


def test_missing_files_are_named(tiny_root, tmp_path):
    with pytest.raises(DataError, match="models"):
        SwissCube(tmp_path)
    data = SwissCube(tiny_root)
    with pytest.raises(DataError, match="unknown split"):
        data.split("train2")
    with pytest.raises(DataError, match="no annotation for image 999"):
        data.load("seq_000000/rgb/000999.png", 0)


def test_max_rotation_bounds_the_angle_from_identity():
    from scipy.spatial.transform import Rotation

    from problems.SwissCube.generator import camera_matrix, sample_pose
    rng = np.random.default_rng(0)
    K = camera_matrix(128)
    limited = [Rotation.from_matrix(sample_pose(rng, K, 128, (300, 1200), 0.15, 30.0)[0]).magnitude()
               for _ in range(200)]
    uniform = [Rotation.from_matrix(sample_pose(rng, K, 128, (300, 1200), 0.15, 180.0)[0]).magnitude()
               for _ in range(200)]
    assert max(limited) <= np.radians(30.0) + 1e-9
    assert max(uniform) > np.radians(120.0)  # uniform over SO(3) reaches far beyond 30 degrees
