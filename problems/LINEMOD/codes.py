"""ZebraPose binary surface codes: the balanced hierarchical 2-means split of a mesh's vertices,
face classes, class -> 3D point, id <-> bits (MSB first) and the 24-bit code images.

Follows ZebraPose `Generate_Mesh_with_GT_Color.cpp`. Official checkpoints are tied to the
official (OpenCV-RNG) k-means run, so real data always uses the released
`Class_CorresPoint*.txt` and `*_GT` images; `balanced_classes` only serves synthetic sets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from quantlab.errors import DataError
from quantlab.files import write_text_atomic

KMEANS_ITERATIONS = 10  # cv2.kmeans TermCriteria(EPS + COUNT, 10, 1.0) in ZebraPose


def _kmeans_pp_init(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two k-means++ centres: a uniform first pick, the second drawn with probability ∝ D²."""
    first = points[rng.integers(len(points))]
    d2 = ((points - first) ** 2).sum(1)
    total = d2.sum()
    second = points[rng.choice(len(points), p=d2 / total)] if total > 0 else first
    return np.stack([first, second])


def _two_means(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's 2-means from a k-means++ start; stops early once the assignment is stable.
    A cluster that empties keeps its previous centre."""
    centres = _kmeans_pp_init(points, rng)
    labels = None
    for _ in range(KMEANS_ITERATIONS):
        new = _nearest(points, centres)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for k in range(2):
            if (labels == k).any():
                centres[k] = points[labels == k].mean(0)
    return centres


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre by squared distance (ties go to centre 0, as std::min_element)."""
    return ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)


def _balanced_split(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half (0/1) of every point: nearest of the two k-means centres, then balanced as ZebraPose.

    A cluster larger than n//2 keeps the n//2 points farthest from the other centre and hands
    the rest to the other cluster (the C++ checks cluster 0 first, then cluster 1 by its
    original size). So when n is odd, half 0 has n//2 points if k-means put more points in
    cluster 0 and n - n//2 otherwise. Distances are floats here; the C++ truncates them to int
    before sorting. Ties go to the larger index first, as in the C++ descending pair sort.
    """
    centres = _two_means(points, rng)
    labels = _nearest(points, centres)
    target = len(points) // 2
    original = [np.flatnonzero(labels == k) for k in range(2)]
    for k in range(2):
        members = original[k]
        if len(members) > target:
            d2 = ((points[members] - centres[1 - k]) ** 2).sum(1)
            order = np.lexsort((-members, -d2))  # farthest from the other centre first
            labels[members[order[target:]]] = 1 - k
    return labels


def balanced_classes(vertices: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """Class id (int64, [N]) of every vertex: `bits` levels of balanced 2-means over every group.

    Level i (1-based) adds half · 2^(bits − i), so the first split is the most significant
    bit and a group's index at a level is its code prefix (children ordered j*2 + k). A numpy
    re-implementation (k-means++ from `np.random.default_rng(seed)`, one attempt, at most 10
    Lloyd iterations, float distances in the balancing): deterministic, but not the OpenCV run.
    """
    vertices = np.asarray(vertices, np.float64)
    if len(vertices) < 2 ** bits:
        raise ValueError(f"{bits} bits need at least {2 ** bits} vertices, the mesh has {len(vertices)}")
    rng = np.random.default_rng(seed)
    ids = np.zeros(len(vertices), np.int64)
    groups = [np.arange(len(vertices))]
    for level in range(1, bits + 1):
        children = []
        for group in groups:
            half = _balanced_split(vertices[group], rng)
            ids[group] += half << (bits - level)
            children += [group[half == 0], group[half == 1]]
        groups = children
    return ids


def face_classes(faces: np.ndarray, vertex_class: np.ndarray) -> np.ndarray:
    """Class of every face: v0's if it equals v1's or v2's, else v1's if v1's equals v2's,
    else v0's (ZebraPose `generate_face_id_class_result`)."""
    c = np.asarray(vertex_class)[np.asarray(faces)]
    v0_wins = (c[:, 0] == c[:, 1]) | (c[:, 0] == c[:, 2]) | (c[:, 1] != c[:, 2])
    return np.where(v0_wins, c[:, 0], c[:, 1]).astype(np.int64)


def class_points(vertices: np.ndarray, faces: np.ndarray, face_class: np.ndarray, bits: int) -> np.ndarray:
    """3D point ([2**bits, 3] float64) of every class: the mean of the three vertices of every
    face with that class (a vertex counts once per face); NaN for a class without faces, as the
    C++ 0/0 (kept: the network may still predict it)."""
    face_class = np.asarray(face_class, np.int64)
    n = 2 ** bits
    if len(face_class) and (face_class.min() < 0 or face_class.max() >= n):
        raise ValueError(f"face classes must lie in 0..{n - 1}")
    corner_sums = np.asarray(vertices, np.float64)[np.asarray(faces)].sum(1)
    sums = np.stack([np.bincount(face_class, corner_sums[:, a], n) for a in range(3)], 1)
    counts = 3 * np.bincount(face_class, minlength=n)
    with np.errstate(invalid="ignore"):
        return sums / counts[:, None]


def ids_to_bits(ids: np.ndarray, bits: int) -> np.ndarray:
    """Bits of class ids as uint8 [..., bits]; channel i = (id >> (bits-1-i)) & 1 (MSB first,
    the first split, as the network's code channels)."""
    shifts = np.arange(bits - 1, -1, -1)
    return ((np.asarray(ids, np.int64)[..., None] >> shifts) & 1).astype(np.uint8)


def bits_to_ids(b: np.ndarray) -> np.ndarray:
    """Inverse of `ids_to_bits` over the last axis (int64)."""
    b = np.asarray(b, np.int64)
    weights = np.int64(1) << np.arange(b.shape[-1] - 1, -1, -1)
    return (b * weights).sum(-1)


def encode_code_image(ids: np.ndarray) -> np.ndarray:
    """[H, W] ids -> [H, W, 3] uint8 in BGR order for cv2.imwrite: B = id >> 16,
    G = (id >> 8) & 255, R = id & 255 (the official GT renderer's colours)."""
    ids = np.asarray(ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("code image ids must lie in 0..2**24-1")
    return np.stack([ids >> 16, (ids >> 8) & 255, ids & 255], -1).astype(np.uint8)


def decode_code_image(bgr: np.ndarray) -> np.ndarray:
    """Ids (int64 [H, W]) of a BGR code image as cv2.imread returns it: (B << 16) + (G << 8) + R."""
    bgr = np.asarray(bgr, np.int64)
    return (bgr[..., 0] << 16) + (bgr[..., 1] << 8) + bgr[..., 2]


def write_class_points(path: Path, points: np.ndarray, bits: int) -> None:
    """`Class_CorresPoint*.txt`: header "<2**bits> 2 <bits>", then "id x y z" per class with
    C++ ostream's default 6 significant digits (NaN as "nan")."""
    points = np.asarray(points, np.float64)
    if points.shape != (2 ** bits, 3):
        raise ValueError(f"expected {2 ** bits} class points of 3 coordinates, got shape {points.shape}")
    lines = [f"{2 ** bits} 2 {bits}"]
    lines += [f"{i} " + " ".join(format(v, "g") for v in p) for i, p in enumerate(points)]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_class_points(path: Path) -> tuple[np.ndarray, int]:
    """Class points ([n, 3] float64, row = class id) and the bit count of a `Class_CorresPoint*.txt`."""
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the class-point file ({exc.__class__.__name__})") from None
    n, bits = _header(path, rows[0] if rows else [])
    if len(rows) - 1 != n:
        raise DataError(f"{path}: the header announces {n} classes, the file lists {len(rows) - 1}")
    ids = np.empty(n, np.int64)
    points = np.empty((n, 3))
    for i, row in enumerate(rows[1:]):
        try:
            if len(row) != 4:
                raise ValueError
            ids[i], points[i] = int(row[0]), [float(v) for v in row[1:]]
        except ValueError:
            raise DataError(f"{path}: line {i + 2} is not 'id x y z': {' '.join(row)!r}") from None
    if not np.array_equal(np.sort(ids), np.arange(n)):
        raise DataError(f"{path}: the class ids are not exactly 0..{n - 1}")
    out = np.empty_like(points)
    out[ids] = points
    return out, bits


def _header(path: Path, row: list[str]) -> tuple[int, int]:
    """(classes, bits) of the header line "<2**bits> 2 <bits>"."""
    try:
        n, divide, bits = (int(v) for v in row)
    except ValueError:
        raise DataError(f"{path}: the first line must be '<classes> 2 <bits>', got {' '.join(row)!r}") from None
    if divide != 2 or bits < 1 or n != 2 ** bits:
        raise DataError(f"{path}: header '{n} {divide} {bits}' is not '<2**bits> 2 <bits>'")
    return n, bits


def write_gt_color_ply(path: Path, vertices: np.ndarray, faces: np.ndarray, face_class: np.ndarray) -> None:
    """`models_GT_color/obj_*.ply`: every face gets its own three vertices coloured with its class
    (R = id & 255, G = (id >> 8) & 255, B = id >> 16), so colours stay flat per face."""
    faces = np.asarray(faces, np.int64)
    face_class = np.asarray(face_class, np.int64)
    corners = np.asarray(vertices, np.float64)[faces].reshape(-1, 3)
    rgb = np.repeat(np.stack([face_class & 255, (face_class >> 8) & 255, (face_class >> 16) & 255], 1), 3, 0)
    vertex = np.empty(len(corners), [("x", "f4"), ("y", "f4"), ("z", "f4"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = corners.T
    vertex["red"], vertex["green"], vertex["blue"] = rgb.T
    face = np.empty(len(faces), [("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = np.arange(len(corners)).reshape(-1, 3)
    ply = PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(face, "face")])
    path.parent.mkdir(parents=True, exist_ok=True)
    ply.write(str(path))
