"""A vectorised numpy z-buffer returning which instance and face is seen at every pixel.

One rasterisation gives masks, visible masks and code images; real LINEMOD meshes have ~10^5
sub-pixel faces, where a per-face Python loop would take seconds, so every (face, pixel)
candidate is evaluated at once instead.
"""
from __future__ import annotations

import numpy as np

MAX_CANDIDATES = 1 << 20  # (face, pixel) pairs per chunk: ~150 MB of temporaries


def rasterize(instances: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], K: np.ndarray,
              size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render `(vertices [N,3] mm, faces [M,3], R [3,3], t [3] mm)` instances with camera `K`
    at `size = (height, width)`.

    Returns `(owner, face, depth)` [H, W]: the index of the instance seen (−1 empty), its face
    index in that instance's own face array (−1 empty) and camera z (inf empty). Pixel (u, v)
    is sampled at its centre (u, v) (OpenCV's K). Faces are counter-clockwise seen from outside;
    back faces and faces with a vertex at z ≤ 0 are dropped. Depth is perspective-correct, so it
    equals the z of the ray's hit. Equal depths go to the earlier instance, then face.
    """
    height, width = size
    owner, local, uv, z = _front_faces(instances, np.asarray(K, np.float64))
    edges, area = _edge_functions(uv)
    x0, x1, y0, y1 = _pixel_boxes(uv, width, height)
    counts = np.maximum(x1 - x0 + 1, 0) * np.maximum(y1 - y0 + 1, 0) * (area != 0)
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    hits = [empty] + [_closest_hits(f, x0, y0, x1 - x0 + 1, counts, edges, area, z, width)
                      for f in _chunks(counts)]
    pixel, depth, face = _first_per_pixel(*(np.concatenate(parts) for parts in zip(*hits)))
    out_owner = np.full(height * width, -1, np.int64)
    out_face = np.full(height * width, -1, np.int64)
    out_depth = np.full(height * width, np.inf)
    out_owner[pixel], out_face[pixel], out_depth[pixel] = owner[face], local[face], depth
    return (out_owner.reshape(height, width), out_face.reshape(height, width),
            out_depth.reshape(height, width))


def _front_faces(instances: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], K: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Over all instances' front faces in front of the camera: instance index, face index within
    the instance, projected corners [F, 3, 2] and corner depths [F, 3]."""
    owner, local, uv, z = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros((0, 3, 2))], [np.zeros((0, 3))]
    for i, (vertices, faces, R, t) in enumerate(instances):
        cam = np.asarray(vertices, np.float64) @ np.asarray(R, np.float64).T + np.asarray(t, np.float64).reshape(3)
        tri = cam[np.asarray(faces, np.int64)]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        keep = np.flatnonzero(((normal * tri[:, 0]).sum(1) < 0) & (tri[:, :, 2] > 0).all(1))
        proj = tri[keep] @ K.T
        owner.append(np.full(len(keep), i, np.int64))
        local.append(keep)
        uv.append(proj[..., :2] / proj[..., 2:])
        z.append(tri[keep, :, 2])
    return np.concatenate(owner), np.concatenate(local), np.concatenate(uv), np.concatenate(z)


def _edge_functions(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge functions [F, 3, 3] (a, b, c), barycentric w_k = (a x + b y + c) / area with k the
    opposite corner, and twice the signed projected area [F]. Kept unnormalised so that a shared
    edge's coefficients are exact negatives in its two faces: a pixel on it is never missed by
    both (watertight)."""
    p, q = uv[:, [1, 2, 0]], uv[:, [2, 0, 1]]
    a = p[..., 1] - q[..., 1]
    b = q[..., 0] - p[..., 0]
    c = p[..., 0] * q[..., 1] - q[..., 0] * p[..., 1]
    return np.stack([a, b, c], -1), c.sum(1)


def _pixel_boxes(uv: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """Integer pixel-centre range (x0, x1, y0, y1) of every face's bounding box, clipped to the
    image; empty where x1 < x0 or y1 < y0."""
    lo = np.clip(np.ceil(uv.min(1)), 0, [width, height]).astype(np.int64)
    hi = np.clip(np.floor(uv.max(1)), -1, [width - 1, height - 1]).astype(np.int64)
    return lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]


def _chunks(counts: np.ndarray) -> list[np.ndarray]:
    """Indices of the faces with candidates, in runs of about MAX_CANDIDATES (face, pixel) pairs."""
    faces = np.flatnonzero(counts)
    run = (np.cumsum(counts[faces]) - 1) // MAX_CANDIDATES
    return [faces[run == r] for r in np.unique(run)]


def _closest_hits(faces: np.ndarray, x0: np.ndarray, y0: np.ndarray, box_width: np.ndarray, counts: np.ndarray,
                  edges: np.ndarray, area: np.ndarray, z: np.ndarray, width: int) -> tuple[np.ndarray, ...]:
    """(pixel, depth, face) of the nearest of the given faces at every pixel they cover."""
    n = counts[faces]
    f = np.repeat(faces, n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    x = x0[f] + k % box_width[f]
    y = y0[f] + k // box_width[f]
    e = edges[f]
    w = e[..., 0] * x[:, None] + e[..., 1] * y[:, None] + e[..., 2]
    inside = (w * np.sign(area[f])[:, None] >= 0).all(1)
    f, x, y = f[inside], x[inside], y[inside]
    depth = 1.0 / (w[inside] / area[f, None] / z[f]).sum(1)
    return _first_per_pixel(y * width + x, depth, f)


def _first_per_pixel(pixel: np.ndarray, depth: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, ...]:
    """The nearest candidate of every pixel (z-test); ties keep the lower face index."""
    order = np.lexsort((face, depth, pixel))
    pixel, depth, face = pixel[order], depth[order], face[order]
    first = np.ones(len(pixel), bool)
    first[1:] = pixel[1:] != pixel[:-1]
    return pixel[first], depth[first], face[first]
