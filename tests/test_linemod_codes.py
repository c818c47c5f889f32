"""ZebraPose surface codes and the numpy z-buffer against hand-derived values and a brute-force ray caster."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from plyfile import PlyData

from problems.LINEMOD.codes import (balanced_classes, bits_to_ids, class_points, decode_code_image,
                                    encode_code_image, face_classes, ids_to_bits, read_class_points,
                                    write_class_points, write_gt_color_ply)
from problems.LINEMOD import render
from problems.LINEMOD.render import rasterize
from quantlab.errors import DataError


def partition(ids: np.ndarray, shift: int) -> set[frozenset[int]]:
    """The groups of point indices sharing the code prefix `ids >> shift`."""
    prefix = ids >> shift
    return {frozenset(np.flatnonzero(prefix == p).tolist()) for p in np.unique(prefix)}


# ---------------------------------------------------------------- balanced hierarchical 2-means

@pytest.mark.parametrize("seed", range(5))
def test_hierarchy_splits_the_widest_axis_first_and_it_is_the_msb(seed):
    # x = ±100 (first split), then y = ±10, then z = ±1: the only sensible 2-means partitions
    points = np.array(list(itertools.product((-100.0, 100.0), (-10.0, 10.0), (-1.0, 1.0))))
    ids = balanced_classes(points, 3, seed)
    assert ids.dtype == np.int64 and sorted(ids.tolist()) == list(range(8))
    assert partition(ids, 2) == {frozenset(range(0, 4)), frozenset(range(4, 8))}  # MSB = x
    assert partition(ids, 1) == {frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5}), frozenset({6, 7})}
    assert np.array_equal(ids, balanced_classes(points, 3, seed))  # deterministic


@pytest.mark.parametrize("seed", range(5))
def test_balancing_moves_the_points_nearest_the_other_centre(seed):
    # k-means gives {A..F} (6) vs {G, H} (2); the big cluster keeps the 4 points farthest from
    # the other centre (201, 0, 0): A 201, B 199, C 197, F 196.3 and hands D 195, E 193 over.
    # An x-median split would keep D (x 6) instead of F (x 7).
    points = np.array([[0, 0, 0], [2, 0, 0], [4, 0, 0], [6, 0, 0], [8, 0, 0], [7, 30, 0],
                       [200, 0, 0], [202, 0, 0]], float)
    ids = balanced_classes(points, 1, seed)
    assert partition(ids, 0) == {frozenset({0, 1, 2, 5}), frozenset({3, 4, 6, 7})}


def test_lloyd_iterations_reach_the_mirror_symmetric_split():
    # a cloud mirrored in x and elongated along x: 2-means converges to the split by the sign
    # of x (equal halves, so balancing is a no-op); k-means++ seeds alone cut it at random angles
    half = np.random.default_rng(3).normal(size=(60, 3)) * [3, 1.5, 0.5]
    half[:, 0] = np.abs(half[:, 0]) + 0.3
    points = np.concatenate([half, half * [-1, 1, 1]])
    for seed in range(10):
        ids = balanced_classes(points, 1, seed)
        assert partition(ids, 0) == {frozenset(range(60)), frozenset(range(60, 120))}, seed


@pytest.mark.parametrize("n, bits", [(13, 3), (7, 2), (37, 5)])
def test_every_level_halves_into_floor_and_ceil(n, bits):
    points = np.random.default_rng(n).normal(size=(n, 3)) * [30, 20, 10]
    ids = balanced_classes(points, bits, seed=1)
    assert set(ids.tolist()) == set(range(2 ** bits))  # n >= 2**bits: no empty class
    for level in range(1, bits + 1):
        parent = ids >> (bits - level + 1)
        half = (ids >> (bits - level)) & 1
        for p in np.unique(parent):
            size = int((parent == p).sum())
            sides = sorted(int(((parent == p) & (half == h)).sum()) for h in (0, 1))
            assert sides == [size // 2, size - size // 2], (level, p)


def test_too_few_vertices_for_the_bits():
    with pytest.raises(ValueError):
        balanced_classes(np.zeros((7, 3)), 3, 0)


# ---------------------------------------------------------------- faces, class points, files

def test_face_class_rule():
    vertex_class = np.array([5, 5, 9, 9, 7])
    faces = np.array([[0, 1, 2],   # v0 == v1 -> 5
                      [0, 2, 1],   # v0 == v2 -> 5
                      [2, 0, 1],   # v1 == v2 -> 5 (v1's)
                      [4, 0, 2],   # all differ -> v0's: 7
                      [2, 3, 2]])  # all equal -> 9
    assert face_classes(faces, vertex_class).tolist() == [5, 5, 5, 7, 9]


def tiny_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vertices = np.array([[0, 0, 0], [6, 0, 0], [0, 6, 0], [0, 0, 6]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3], [1, 2, 3]])
    return vertices, faces, np.array([1, 1, 3])


def test_class_points_are_face_vertex_means_and_empty_classes_nan():
    vertices, faces, face_class = tiny_mesh()
    pts = class_points(vertices, faces, face_class, 2)
    assert pts.shape == (4, 3)
    # class 1: v0 + v1 + v2 + v0 + v2 + v3 over 6 (shared vertices count per face; not (1.5, 1.5, 1.5))
    np.testing.assert_allclose(pts[1], [1, 2, 1])
    np.testing.assert_allclose(pts[3], [2, 2, 2])
    assert np.isnan(pts[0]).all() and np.isnan(pts[2]).all()


def test_class_point_file_round_trip_keeps_nan(tmp_path):
    vertices, faces, face_class = tiny_mesh()
    pts = class_points(vertices, faces, face_class, 2)
    pts[3] = [123.456789, -0.0001234567, 1e-7]
    path = tmp_path / "Class_CorresPoint000001.txt"
    write_class_points(path, pts, 2)
    assert path.read_text().splitlines() == ["4 2 2", "0 nan nan nan", "1 1 2 1", "2 nan nan nan",
                                             "3 123.457 -0.000123457 1e-07"]
    back, bits = read_class_points(path)
    assert bits == 2 and back.shape == (4, 3)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(pts))
    np.testing.assert_allclose(back[[1, 3]], pts[[1, 3]], rtol=1e-5)


def test_reader_accepts_minus_nan_and_any_id_order(tmp_path):
    path = tmp_path / "Class_CorresPoint000002.txt"
    path.write_text("2 2 1\n1 4 5 6\n0 -nan -nan -nan\n")
    points, bits = read_class_points(path)
    assert bits == 1 and np.isnan(points[0]).all() and points[1].tolist() == [4, 5, 6]


@pytest.mark.parametrize("text", ["65536 2\n", "8 2 3\n0 0 0 0\n",  # header short / fewer lines than announced
                                  "3 2 1\n0 1 2 3\n1 1 2 3\n2 1 2 3\n",  # classes != 2**bits
                                  "2 3 1\n0 1 2 3\n1 1 2 3\n",           # not a binary split
                                  "2 2 1\n0 1 2 3\n0 1 2 3\n",           # ids not 0..n-1
                                  "2 2 1\n0 1 2 3\n1 1 2\n",             # a line of 3 numbers
                                  "2 2 1\n0 1 2 3\n1 1 2 x\n", ""])
def test_reader_names_the_malformed_file(tmp_path, text):
    path = tmp_path / "Class_CorresPoint000003.txt"
    path.write_text(text)
    with pytest.raises(DataError, match="Class_CorresPoint000003.txt"):
        read_class_points(path)


def test_reader_names_the_missing_file(tmp_path):
    with pytest.raises(DataError, match="Class_CorresPoint000004.txt"):
        read_class_points(tmp_path / "Class_CorresPoint000004.txt")


def test_gt_color_ply_has_flat_per_face_colours(tmp_path):
    vertices, faces, _ = tiny_mesh()
    face_class = np.array([0x010203, 7, 0xFFFFFF])
    write_gt_color_ply(tmp_path / "obj.ply", vertices, faces, face_class)
    ply = PlyData.read(str(tmp_path / "obj.ply"))
    v = ply["vertex"]
    assert len(v.data) == 9 and len(ply["face"].data) == 3
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1)
    assert rgb[:3].tolist() == [[3, 2, 1]] * 3 and rgb[3:6].tolist() == [[7, 0, 0]] * 3
    for f, corners in enumerate(ply["face"]["vertex_indices"]):
        xyz = np.stack([v["x"], v["y"], v["z"]], 1)[corners]
        np.testing.assert_allclose(xyz, vertices[faces[f]])


# ---------------------------------------------------------------- bits and code images

def test_bits_are_msb_first():
    assert ids_to_bits(np.array(0b10000011), 8).tolist() == [1, 0, 0, 0, 0, 0, 1, 1]
    assert ids_to_bits(np.array([[5]]), 4).tolist() == [[[0, 1, 0, 1]]]
    assert ids_to_bits(np.array(1), 4).dtype == np.uint8
    assert bits_to_ids(np.array([1, 1, 0, 0])) == 12
    ids = np.random.default_rng(0).integers(0, 2 ** 16, size=(3, 5))
    assert ids_to_bits(ids, 16).shape == (3, 5, 16)
    assert np.array_equal(bits_to_ids(ids_to_bits(ids, 16)), ids)


def test_code_image_bytes_and_png_round_trip(tmp_path):
    ids = np.array([[0x123456, 0], [255, 65536 + 258]])
    bgr = encode_code_image(ids)
    assert bgr.dtype == np.uint8 and bgr.shape == (2, 2, 3)
    assert bgr[0, 0].tolist() == [0x12, 0x34, 0x56] and bgr[1, 1].tolist() == [1, 1, 2]
    assert bgr[1, 0].tolist() == [0, 0, 255]
    assert decode_code_image(bgr).dtype == np.int64
    assert np.array_equal(decode_code_image(bgr), ids)
    many = np.random.default_rng(1).integers(0, 2 ** 24, size=(17, 23))
    cv2.imwrite(str(tmp_path / "code.png"), encode_code_image(many))
    assert np.array_equal(decode_code_image(cv2.imread(str(tmp_path / "code.png"), cv2.IMREAD_COLOR)), many)


# ---------------------------------------------------------------- rasterizer vs ray casting

def outward(vertices: np.ndarray, faces: list[list[int]]) -> np.ndarray:
    """Faces of a convex mesh centred on the origin, wound counter-clockwise seen from outside."""
    faces = np.array(faces)
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = (normal * tri.mean(1)).sum(1) < 0
    faces[inward] = faces[inward][:, ::-1]
    return faces


def cube(half: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array(list(itertools.product((-half, half), repeat=3)))
    quads = [[0, 1, 3, 2], [4, 5, 7, 6], [0, 1, 5, 4], [2, 3, 7, 6], [0, 2, 6, 4], [1, 3, 7, 5]]
    return v, outward(v, [[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads])


def tetrahedron(size: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) * size
    return v, outward(v, [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])


def octahedron(size: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float) * size
    return v, outward(v, [[x, y, z] for x in (0, 1) for y in (2, 3) for z in (4, 5)])


K = np.array([[55.0, 0, 19.7], [0, 53.0, 15.3], [0, 0, 1]])
SIZE = (32, 40)


def scene() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """A cube partly hidden by a nearer tetrahedron, and an octahedron cut by the image border."""
    rot = lambda r: cv2.Rodrigues(np.array(r, float))[0]  # noqa: E731
    return [(*cube(40.0), rot([0.5, -0.4, 0.3]), np.array([-8.0, 3.0, 260.0])),
            (*tetrahedron(22.0), rot([-0.2, 0.7, 0.1]), np.array([12.0, -10.0, 190.0])),
            (*octahedron(30.0), rot([0.3, 0.2, -0.9]), np.array([100.0, 45.0, 300.0]))]


def ray_hit(d: tuple, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[float, float] | None:
    """Möller–Trumbore from the camera centre along d: (distance along d, smallest barycentric)."""
    e1, e2 = b - a, c - a
    p = np.cross(d, e2)
    det = float(e1 @ p)
    if abs(det) < 1e-12:
        return None
    s = -a
    u = float(s @ p) / det
    q = np.cross(s, e1)
    v = float(np.dot(d, q)) / det
    return float(e2 @ q) / det, min(u, v, 1 - u - v)


def cast(instances, K: np.ndarray, size: tuple[int, int]):
    """Nearest hit of the ray through every pixel centre over all faces (front and back),
    and whether any face's edge passes within 1e-9 (barycentric) of the ray."""
    height, width = size
    owner = np.full(size, -1)
    face = np.full(size, -1)
    depth = np.full(size, np.inf)
    edge = np.zeros(size, bool)
    tris = [(i, f, (verts @ R.T + t)[tri]) for i, (verts, faces, R, t) in enumerate(instances)
            for f, tri in enumerate(faces)]
    Kinv = np.linalg.inv(K)
    for v, u in itertools.product(range(height), range(width)):
        d = Kinv @ [u, v, 1.0]  # d_z = 1: the distance along d is camera z
        for i, f, (a, b, c) in tris:
            hit = ray_hit(d, a, b, c)
            if hit is None or hit[0] <= 0 or hit[1] < -1e-9:
                continue
            edge[v, u] |= hit[1] <= 1e-9
            if hit[0] < depth[v, u]:
                owner[v, u], face[v, u], depth[v, u] = i, f, hit[0]
    return owner, face, depth, edge


def test_rasterizer_matches_ray_casting():
    instances = scene()
    owner, face, depth = rasterize(instances, K, SIZE)
    assert owner.shape == face.shape == depth.shape == SIZE
    assert owner.dtype == face.dtype == np.int64 and depth.dtype == np.float64
    ref_owner, ref_face, ref_depth, edge = cast(instances, K, SIZE)
    assert set(np.unique(ref_owner)) == {-1, 0, 1, 2}  # all three seen, some background
    agree = (owner == ref_owner) & (face == ref_face)
    assert agree.mean() >= 0.99
    assert agree[~edge].all()
    both = (ref_owner >= 0) & (owner >= 0)
    np.testing.assert_allclose(depth[both], ref_depth[both], rtol=1e-6)
    assert np.isinf(depth[owner < 0]).all() and (face[owner < 0] == -1).all()


def test_chunked_candidates_give_the_same_buffers(monkeypatch):
    whole = rasterize(scene(), K, SIZE)
    monkeypatch.setattr(render, "MAX_CANDIDATES", 7)
    for a, b in zip(whole, rasterize(scene(), K, SIZE)):
        np.testing.assert_array_equal(a, b)


def test_visible_mask_is_inside_the_mask_of_the_object_alone():
    instances = scene()
    owner, _, _ = rasterize(instances, K, SIZE)
    for i, inst in enumerate(instances):
        alone, _, _ = rasterize([inst], K, SIZE)
        mask, visib = alone >= 0, owner == i
        assert not (visib & ~mask).any()
        assert (mask != visib).any() == (i == 0), i  # only the cube is occluded
    assert rasterize([], K, SIZE)[0].max() == -1
