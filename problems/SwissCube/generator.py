"""Synthetic SwissCube: a textured CubeSat-like cuboid in the real dataset's on-disk layout.

The object is a 1U-CubeSat-sized cuboid whose space diagonal equals SwissCube's diameter
(178.46 mm), so the real dataset's constants apply unchanged. Each face has its own colour
and a dark marker quadrant, so every pose is distinguishable. Images are
rendered at random rotations over a wide depth range, above space-like backgrounds, with
visible masks, and written exactly as the loader expects the real data.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from problems.SwissCube.mesh import Mesh, box_corners, write_ply
from problems.SwissCube.render import rasterize
from quantlab.progress import progress

DIAMETER = 178.46
SPLIT_FILES = {"train": "training.txt", "validation": "validation.txt", "test": "testing.txt"}
FACE_COLORS = np.array([[220, 60, 50], [50, 170, 70], [60, 90, 220],
                        [230, 200, 40], [200, 70, 200], [60, 200, 210]], dtype=float)


def cubesat_mesh(grid: int = 6) -> Mesh:
    """A 100 x 100 x h mm cuboid (h so that the diameter is 178.46 mm), faces split into
    grid x grid cells (the points ADD/ADI use) coloured per face with a dark marker
    quadrant; cells own their vertices so colours stay flat."""
    half = np.array([100.0, 100.0, np.sqrt(DIAMETER ** 2 - 2 * 100.0 ** 2)]) / 2
    vertices, faces, colors = [], [], []
    for axis in range(3):
        for sign in (-1, 1):
            face_id = 2 * axis + (sign > 0)
            u_axis, v_axis = (axis + 1) % 3, (axis + 2) % 3  # u x v points along +axis
            if sign < 0:
                u_axis, v_axis = v_axis, u_axis  # keep the winding outward-facing
            for i in range(grid):
                for j in range(grid):
                    corners = []
                    for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1)):
                        p = np.zeros(3)
                        p[axis] = sign * half[axis]
                        p[u_axis] = -half[u_axis] + 2 * half[u_axis] * (i + du) / grid
                        p[v_axis] = -half[v_axis] + 2 * half[v_axis] * (j + dv) / grid
                        corners.append(p)
                    base = len(vertices)
                    vertices += corners
                    faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
                    # a dark marker quadrant breaks the face's rotational symmetry; the
                    # rest is the face's own colour, readable even when the object is small
                    tone = 0.25 if (i < grid // 2 and j < grid // 2) else 1.0
                    colors += [np.clip(FACE_COLORS[face_id] * tone, 0, 255)] * 4
    return Mesh(np.array(vertices), np.array(faces, np.int64), np.array(colors, np.uint8))


def camera_matrix(size: int) -> np.ndarray:
    """SwissCube's internal camera (f = 303.79 px at 512 px) scaled to `size`."""
    f = 303.7865161198519 * size / 512
    return np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])


def space_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark sky with stars, sometimes a large bright Earth-like disc, plus sensor noise."""
    img = np.full((size, size, 3), rng.uniform(0.0, 0.08)) + rng.normal(0, 0.01, (size, size, 3))
    stars = rng.integers(0, size, (rng.integers(5, 40), 2))
    img[stars[:, 1], stars[:, 0]] = rng.uniform(0.5, 1.0, (len(stars), 1))
    if rng.random() < 0.5:
        yy, xx = np.mgrid[:size, :size]
        cx, cy = rng.uniform(-0.5, 1.5, 2) * size
        radius = rng.uniform(0.6, 1.5) * size
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < radius ** 2
        tint = np.array([0.25, 0.45, 0.75]) * rng.uniform(0.5, 1.0)
        clouds = cv2.GaussianBlur(rng.random((size, size)), (0, 0), size / 20)
        earth = tint[None, None] + 0.6 * (clouds[..., None] - 0.5)
        img[inside] = earth[inside]
    return np.clip(img, 0, 1)


def sample_pose(rng: np.random.Generator, K: np.ndarray, size: int, depth_range: tuple[float, float],
                margin: float, max_rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotation uniform over SO(3) (max_rotation 180) or within `max_rotation` degrees of the
    identity; depth uniform in range; centre projected inside the image margins."""
    if max_rotation >= 180:
        R = Rotation.random(random_state=rng.integers(2 ** 31)).as_matrix()
    else:
        axis = rng.normal(size=3)
        angle = np.radians(rng.uniform(0, max_rotation))
        R = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    z = rng.uniform(*depth_range)
    u, v = rng.uniform(margin * size, (1 - margin) * size, 2)
    t = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])
    return R, t


def render_sample(mesh: Mesh, R: np.ndarray, t: np.ndarray, K: np.ndarray, size: int,
                  rng: np.random.Generator, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit RGB image and its visible mask (255 inside), anti-aliased by supersampling."""
    big = size * supersample
    Kb = K.copy()
    Kb[:2] *= supersample
    Kb[:2, 2] += (supersample - 1) / 2  # pixel centres of the large image map onto the small one
    light = rng.normal(size=3)
    light /= np.linalg.norm(light)
    face_colors = mesh.colors[mesh.faces[:, 0]].astype(float) / 255
    obj, zbuf = rasterize(mesh.vertices @ R.T + t, mesh.faces, face_colors, Kb, big, big, light)
    hit = np.isfinite(zbuf)
    back = cv2.resize(space_background(rng, size), (big, big), interpolation=cv2.INTER_LINEAR)
    img = np.where(hit[..., None], obj, back)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
    coverage = cv2.resize(hit.astype(float), (size, size), interpolation=cv2.INTER_AREA)
    return (img * 255).round().astype(np.uint8), np.where(coverage >= 0.5, 255, 0).astype(np.uint8)


def generate(root: Path, params: dict) -> str:
    """Write the synthetic set into `root`, a missing or empty folder."""
    size = params["image_size"]
    counts = params["images"]
    per_seq = params["images_per_sequence"]
    rng = np.random.default_rng(params["seed"])
    mesh = cubesat_mesh()
    write_ply(mesh, root / "models" / "obj_000001.ply")
    (root / "swisscube_bbox.json").write_text(json.dumps([box_corners(mesh).tolist()], indent=2))
    K = camera_matrix(size)
    seq = 0
    total = sum(counts.values())
    bar = progress(desc="synthetic SwissCube", total=total)
    for split, n in counts.items():
        lines = []
        for start in range(0, n, per_seq):
            folder = root / f"seq_{seq:06d}"
            gt, cams = {}, {}
            for im_id in range(min(per_seq, n - start)):
                R, t = sample_pose(rng, K, size, tuple(params["depth_range"]), params["margin"],
                                   params["max_rotation"])
                img, mask = render_sample(mesh, R, t, K, size, rng)
                for sub, name, data in (("rgb", f"{im_id:06d}.png", img[..., ::-1]),
                                        ("mask_visib", f"{im_id:06d}_000000.png", mask)):
                    (folder / sub).mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(folder / sub / name), data)
                gt[str(im_id)] = [{"cam_R_m2c": R.reshape(-1).tolist(), "cam_t_m2c": t.tolist(), "obj_id": 1}]
                cams[str(im_id)] = {"cam_K": K.reshape(-1).tolist()}
                lines.append(f"{folder.name}/rgb/{im_id:06d}.png")
                bar.update()
            (folder / "scene_gt.json").write_text(json.dumps(gt))
            (folder / "scene_camera.json").write_text(json.dumps(cams))
            seq += 1
        (root / SPLIT_FILES[split]).write_text("\n".join(lines) + "\n")
    bar.close()
    return f"generated a synthetic SwissCube set ({total} images at {size} px) in {root}"
