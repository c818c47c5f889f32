"""A small z-buffer rasterizer for the synthetic generator (numpy, flat-shaded triangles)."""
from __future__ import annotations

import numpy as np


def rasterize(vertices_cam: np.ndarray, faces: np.ndarray, face_colors: np.ndarray,
              K: np.ndarray, height: int, width: int, light: np.ndarray,
              ambient: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Render triangles given in camera coordinates (mm).

    Returns an RGB float image in [0, 1] (zeros where nothing was drawn) and the depth
    buffer (inf where empty). Pixel centres sit at integer coordinates, as in OpenCV's K.
    Back faces are culled (meshes are closed and outward-facing); shading is Lambertian.
    """
    rgb = np.zeros((height, width, 3))
    zbuf = np.full((height, width), np.inf)
    uvw = vertices_cam @ K.T
    uv = uvw[:, :2] / uvw[:, 2:3]
    tri = vertices_cam[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    front = (normals * tri[:, 0]).sum(1) < 0
    shade = ambient + (1 - ambient) * np.clip(normals @ -light, 0, 1)
    for f in np.nonzero(front)[0]:
        p = uv[faces[f]]
        z = vertices_cam[faces[f], 2]
        x0, y0 = np.floor(p.min(0)).astype(int)
        x1, y1 = np.ceil(p.max(0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)
        if x0 > x1 or y0 > y1:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
        area = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[2, 0] - p[0, 0]) * (p[1, 1] - p[0, 1])
        if abs(area) < 1e-12:
            continue
        w0 = ((p[1, 0] - xs) * (p[2, 1] - ys) - (p[2, 0] - xs) * (p[1, 1] - ys)) / area
        w1 = ((p[2, 0] - xs) * (p[0, 1] - ys) - (p[0, 0] - xs) * (p[2, 1] - ys)) / area
        w2 = 1 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        depth = 1.0 / (w0 / z[0] + w1 / z[1] + w2 / z[2])
        closer = inside & (depth < zbuf[y0:y1 + 1, x0:x1 + 1])
        zbuf[y0:y1 + 1, x0:x1 + 1][closer] = depth[closer]
        rgb[y0:y1 + 1, x0:x1 + 1][closer] = face_colors[f] * shade[f]
    return rgb, zbuf
