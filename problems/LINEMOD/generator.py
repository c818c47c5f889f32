"""Synthetic LINEMOD: two procedural textured objects in the BOP layout plus the ZebraPose
ground truth (`models_GT_color/`, `<split>_GT/`), everything the reader reads.

Object 1 (an "ape" stand-in) is a box with an off-centre block: no symmetry. Object 10
(an "eggbox" stand-in) has a 180-degree symmetry about its z axis in shape and texture,
declared in `models_info.json` as `symmetries_discrete`, so evaluation takes the ADI path.
Targets are posed within `max_rotation` of a fixed tilted view (as SwissCube's mini set
limits rotations: a CPU-sized network cannot learn all of SO(3) in minutes), both in every
image, with up to `occluders` grey boxes, half of them on a target's line of sight, so
`mask_visib` differs from `mask`. Codes follow the official rules (balanced 2-means, MSB
first); code images are rendered per object alone, as the official renderer does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from plyfile import PlyData, PlyElement
from scipy.spatial.transform import Rotation

from problems.LINEMOD.codes import (balanced_classes, class_points, encode_code_image, face_classes,
                                    write_class_points, write_gt_color_ply)
from problems.LINEMOD.render import rasterize
from quantlab.progress import progress

ASYMMETRIC, SYMMETRIC = 1, 10
#: 180 degrees about z, BOP's 4x4 row-major form (mm)
Z_TWIN = [-1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
#: the view the target rotations are drawn around: tilted so the top and two sides show
CANONICAL = Rotation.from_euler("xz", [120.0, 30.0], degrees=True).as_matrix()


@dataclass
class Mesh:
    vertices: np.ndarray  # [N, 3] mm
    faces: np.ndarray     # [M, 3], counter-clockwise seen from outside
    colors: np.ndarray    # [N, 3] uint8 RGB


def box(centre, size, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """A closed box whose faces are grid x grid quads, outward winding."""
    half = np.asarray(size, float) / 2
    vertices, faces = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u, v = (axis + 1) % 3, (axis + 2) % 3
            if sign < 0:
                u, v = v, u
            base = len(vertices)
            for i in range(grid + 1):
                for j in range(grid + 1):
                    p = np.zeros(3)
                    p[axis] = sign * half[axis]
                    p[u] = -half[u] + 2 * half[u] * i / grid
                    p[v] = -half[v] + 2 * half[v] * j / grid
                    vertices.append(p + np.asarray(centre, float))
            for i in range(grid):
                for j in range(grid):
                    a, b = base + i * (grid + 1) + j, base + (i + 1) * (grid + 1) + j
                    faces += [[a, b, b + 1], [a, b + 1, a + 1]]
    return np.array(vertices), np.array(faces, np.int64)


def union(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces, offset = [], [], 0
    for v, f in parts:
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(faces)


def textured(vertices: np.ndarray, faces: np.ndarray, phase: np.ndarray, symmetric: bool) -> Mesh:
    """Smooth sinusoidal colours; with `symmetric`, even in x and y (invariant under the
    z twin) so the texture keeps the symmetry."""
    x, y, z = (vertices / 40.0).T
    if symmetric:
        x, y = np.abs(x), np.abs(y)
    channels = [np.sin(1.7 * x + phase[0]) + np.cos(1.3 * y + phase[1]),
                np.sin(1.1 * y + 0.8 * z + phase[2]) + np.cos(0.9 * x + phase[3]),
                np.sin(1.5 * z + phase[4]) + np.cos(0.7 * x + 1.2 * y + phase[5])]
    colors = 127.5 + 60.0 * np.stack(channels, axis=1)
    return Mesh(vertices, faces, np.clip(colors, 0, 255).astype(np.uint8))


def objects() -> dict[int, Mesh]:
    asym = union([box([0, 0, 0], [90, 60, 50], 11), box([30, 18, 38], [30, 24, 26], 6)])
    sym = union([box([0, 0, 0], [110, 56, 40], 11), box([38, 0, 30], [24, 30, 20], 5),
                 box([-38, 0, 30], [24, 30, 20], 5)])
    return {ASYMMETRIC: textured(*asym, np.array([0.3, 1.1, 2.0, 0.4, 1.7, 2.6]), symmetric=False),
            SYMMETRIC: textured(*sym, np.array([1.9, 0.2, 0.8, 2.2, 0.5, 1.4]), symmetric=True)}


def write_model(path: Path, mesh: Mesh) -> None:
    """`models/obj_*.ply`: x y z nx ny nz red green blue and faces, mm (BOP's layout)."""
    v, f = mesh.vertices, mesh.faces
    face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normals = np.zeros_like(v)
    for k in range(3):
        np.add.at(normals, f[:, k], face_n)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    vertex = np.empty(len(v), [(n, "f4") for n in ("x", "y", "z", "nx", "ny", "nz")] +
                      [(n, "u1") for n in ("red", "green", "blue")])
    for i, n in enumerate(("x", "y", "z")):
        vertex[n] = v[:, i]
        vertex["n" + n] = normals[:, i]
    for i, n in enumerate(("red", "green", "blue")):
        vertex[n] = mesh.colors[:, i]
    face = np.empty(len(f), [("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = f
    PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(face, "face")]).write(str(path))


def model_info(mesh: Mesh, symmetric: bool) -> dict:
    v = mesh.vertices
    diffs = v[:, None, :] - v[None, :, :]
    low, size = v.min(axis=0), v.max(axis=0) - v.min(axis=0)
    info = {"diameter": float(np.sqrt((diffs ** 2).sum(-1)).max()),
            **{f"min_{a}": float(low[i]) for i, a in enumerate("xyz")},
            **{f"size_{a}": float(size[i]) for i, a in enumerate("xyz")}}
    if symmetric:
        info["symmetries_discrete"] = [Z_TWIN]
    return info


def camera(params: dict) -> np.ndarray:
    """LINEMOD's camera (fx 572.4, fy 573.6, cx 325.3, cy 242.0 at 640 x 480) scaled to the image."""
    s = params["width"] / 640.0
    return np.array([[572.4114 * s, 0, 325.2611 * s], [0, 573.5704 * s, 242.0490 * s], [0, 0, 1]])


def target_pose(rng: np.random.Generator, K: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    axis = rng.normal(size=3)
    angle = np.deg2rad(rng.uniform(0, params["max_rotation"]))
    R = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix() @ CANONICAL
    margin = params["margin"]
    u = rng.uniform(margin, 1 - margin) * params["width"]
    v = rng.uniform(margin, 1 - margin) * params["height"]
    z = rng.uniform(*params["depth_range"])
    return R, z * np.linalg.solve(K, np.array([u, v, 1.0]))


def occluders(rng: np.random.Generator, targets: list[tuple], K: np.ndarray, params: dict) -> list[tuple]:
    """Up to `params["occluders"]` grey boxes posed anyhow, every other one on a target's
    line of sight in front of it: (mesh, R, t) each."""
    out = []
    for n in range(int(rng.integers(0, params["occluders"] + 1))):
        vertices, faces = box([0, 0, 0], rng.uniform(25, 60, 3), 1)
        R = Rotation.random(random_state=int(rng.integers(2 ** 31))).as_matrix()
        if n % 2 == 0:
            _, _, t_target = targets[int(rng.integers(len(targets)))]
            t = t_target * rng.uniform(0.55, 0.8) + rng.normal(0, 12, 3) * [1, 1, 0]
        else:
            _, t = target_pose(rng, K, params)
        out.append((Mesh(vertices, faces, np.full((len(vertices), 3), rng.uniform(60, 200), np.uint8)), R, t))
    return out


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    low = rng.uniform(0, 255, (4, 5, 3)).astype(np.float32)
    image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255)


def shade(mesh: Mesh, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-face RGB: the mean vertex colour x a Lambert term towards the camera."""
    v = mesh.vertices @ R.T + t
    f = mesh.faces
    normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    centre = v[f].mean(axis=1)
    cos = np.abs((normal * centre).sum(1)) / (np.linalg.norm(normal, axis=1) * np.linalg.norm(centre, axis=1)).clip(1e-12)
    return mesh.colors[f].astype(np.float64).mean(axis=1) * (0.35 + 0.65 * cos)[:, None]


def bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return [-1, -1, -1, -1]
    return [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]


def write_split(root: Path, split: str, count: int, meshes: dict[int, Mesh], codes: dict[int, np.ndarray],
                params: dict, rng: np.random.Generator) -> None:
    K = camera(params)
    height, width = params["height"], params["width"]
    per_scene = params["images_per_scene"]
    scenes: dict[int, tuple[dict, dict, dict]] = {}
    for index in progress(range(count), desc=f"synthetic LINEMOD {split}"):
        scene, image_id = divmod(index, per_scene)
        folder = root / split / f"{scene:06d}"
        gt_folder = root / f"{split}_GT" / f"{scene:06d}"
        for sub in ("rgb", "mask", "mask_visib"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        gt_folder.mkdir(parents=True, exist_ok=True)
        targets = [(obj_id, *target_pose(rng, K, params)) for obj_id in meshes]
        scene_items = [(meshes[o], R, t) for o, R, t in targets] + occluders(rng, targets, K, params)
        owner, face, _ = rasterize([(m.vertices, m.faces, R, t) for m, R, t in scene_items], K, (height, width))
        image = background(rng, height, width)
        for n, (mesh, R, t) in enumerate(scene_items):
            here = owner == n
            image[here] = shade(mesh, R, t)[face[here]]
        cv2.imwrite(str(folder / "rgb" / f"{image_id:06d}.png"), np.clip(image, 0, 255).astype(np.uint8)[..., ::-1])
        gt, info, cams = scenes.setdefault(scene, ({}, {}, {}))
        gt[str(image_id)], info[str(image_id)] = [], []
        cams[str(image_id)] = {"cam_K": K.reshape(-1).tolist(), "depth_scale": 1.0}
        for n, (obj_id, R, t) in enumerate(targets):
            alone_owner, alone_face, _ = rasterize([(meshes[obj_id].vertices, meshes[obj_id].faces, R, t)], K,
                                                   (height, width))
            full, visible = alone_owner == 0, owner == n
            ids = np.where(full, codes[obj_id][np.maximum(alone_face, 0)], 0)
            name = f"{image_id:06d}_{n:06d}.png"
            cv2.imwrite(str(folder / "mask" / name), full.astype(np.uint8) * 255)
            cv2.imwrite(str(folder / "mask_visib" / name), visible.astype(np.uint8) * 255)
            cv2.imwrite(str(gt_folder / name), encode_code_image(ids))
            gt[str(image_id)].append({"cam_R_m2c": R.reshape(-1).tolist(), "cam_t_m2c": t.tolist(), "obj_id": obj_id})
            px_all, px_visib = int(full.sum()), int(visible.sum())
            info[str(image_id)].append({"bbox_obj": bbox(full), "bbox_visib": bbox(visible), "px_count_all": px_all,
                                        "px_count_valid": px_all, "px_count_visib": px_visib,
                                        "visib_fract": px_visib / px_all if px_all else 0.0})
    for scene, (gt, info, cams) in scenes.items():
        folder = root / split / f"{scene:06d}"
        for name, data in (("scene_gt.json", gt), ("scene_gt_info.json", info), ("scene_camera.json", cams)):
            (folder / name).write_text(json.dumps(data))


def generate(root: Path, params: dict) -> str:
    """Write the synthetic set under `root`; return a one-line summary."""
    rng = np.random.default_rng(params["seed"])
    meshes = objects()
    (root / "models").mkdir(parents=True)
    (root / "models_GT_color").mkdir()
    K = camera(params)
    (root / "camera.json").write_text(json.dumps({"cx": K[0, 2], "cy": K[1, 2], "fx": K[0, 0], "fy": K[1, 1],
                                                  "width": params["width"], "height": params["height"],
                                                  "depth_scale": 1.0}))
    info, codes = {}, {}
    for obj_id, mesh in meshes.items():
        write_model(root / "models" / f"obj_{obj_id:06d}.ply", mesh)
        info[str(obj_id)] = model_info(mesh, obj_id == SYMMETRIC)
        vertex_class = balanced_classes(mesh.vertices, params["bits"], params["seed"] + obj_id)
        codes[obj_id] = face_classes(mesh.faces, vertex_class)
        write_class_points(root / "models_GT_color" / f"Class_CorresPoint{obj_id:06d}.txt",
                           class_points(mesh.vertices, mesh.faces, codes[obj_id], params["bits"]), params["bits"])
        write_gt_color_ply(root / "models_GT_color" / f"obj_{obj_id:06d}.ply", mesh.vertices, mesh.faces, codes[obj_id])
    (root / "models" / "models_info.json").write_text(json.dumps(info, indent=1))
    for split, count in params["images"].items():
        write_split(root, split, count, meshes, codes, params, rng)
    return (f"synthetic LINEMOD: objects {sorted(meshes)} ({params['bits']}-bit codes), "
            + ", ".join(f"{count} {split} images" for split, count in params["images"].items()))
