"""Object meshes in PLY (as BOP and SwissCube ship them), read and written with plyfile."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from quantlab.errors import DataError


@dataclass
class Mesh:
    vertices: np.ndarray             # (N, 3) float, millimetres
    faces: np.ndarray                # (M, 3) int
    colors: np.ndarray | None = None  # (N, 3) uint8 per vertex

    @property
    def points(self) -> np.ndarray:
        """Distinct vertex positions: the point set ADD/ADI are computed on."""
        return np.unique(self.vertices, axis=0)

    def diameter(self) -> float:
        pts = self.points
        diffs = pts[:, None, :] - pts[None, :, :]
        return float(np.sqrt((diffs ** 2).sum(-1)).max())


def read_ply(path: Path) -> Mesh:
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"]
        vertices = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a readable PLY mesh ({exc})")
    names = v.data.dtype.names
    colors = (np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
              if {"red", "green", "blue"} <= set(names) else None)
    faces = np.zeros((0, 3), np.int64)
    if "face" in ply:
        key = "vertex_indices" if "vertex_indices" in ply["face"].data.dtype.names else "vertex_index"
        faces = np.stack([np.asarray(f, np.int64)[:3] for f in ply["face"][key]]) if len(ply["face"].data) else faces
    return Mesh(vertices, faces, colors)


def write_ply(mesh: Mesh, path: Path) -> None:
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(mesh.vertices), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = mesh.vertices.T
    if mesh.colors is not None:
        vertex["red"], vertex["green"], vertex["blue"] = mesh.colors.T
    face = np.empty(len(mesh.faces), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = mesh.faces
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(face, "face")]).write(str(path))


def box_corners(mesh: Mesh) -> np.ndarray:
    """The 8 corners of the axis-aligned 3D bounding box, x slowest and z fastest."""
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
