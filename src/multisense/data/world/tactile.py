"""GelSight-like tactile frames, rendered by the library from the fingertip's penetration into the
surface's fine height map, the way vision-based tactile simulators do (Taxim, Si & Yuan 2022;
TACTO, Wang et al. 2022): MuJoCo gives where the pad is and how hard it presses (its contacts are
too stiff, and its touch grid too sparse, to be the image itself); the elastomer's deformation is
the part of the surface above the pressed-in gel, smoothed as the gel spreads it, and the frame
is the gel's surface normals shaded by three coloured lights over the no-contact background.

Shapes: frames [size, size, 3] float in [0, 1]; the pad window covers `pad` metres square.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

# Three lights at 120 degrees around the pad, tilted 45 degrees, red / green / blue (GelSight's layout)
_ANGLES = np.deg2rad([90.0, 210.0, 330.0])
LIGHTS = np.stack([np.cos(_ANGLES) * np.sqrt(0.5), np.sin(_ANGLES) * np.sqrt(0.5), np.full(3, np.sqrt(0.5))], 1)


def background(size: int) -> np.ndarray:
    """The sensor's frame without contact: a flat gel lit unevenly (a vignette and a colour ramp)."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    vignette = 1.0 - 0.6 * (x ** 2 + y ** 2)
    img = np.stack([0.45 + 0.08 * x, 0.42 + 0.08 * y, 0.50 - 0.05 * x], -1) * vignette[..., None]
    return img.clip(0, 1)


def surface_window(fine: np.ndarray, relief: float, half_extent: float, center: tuple[float, float], pad: float,
                   size: int) -> np.ndarray:
    """Heights (m) of the fine map under a pad of side `pad` centred at world `center`: [size, size].
    The map spans [-half_extent, half_extent] in x (columns) and y (rows), as MuJoCo's height field."""
    n = fine.shape[0]
    offs = (np.arange(size) / max(size - 1, 1) - 0.5) * pad
    ys, xs = np.meshgrid(center[1] + offs, center[0] + offs, indexing="ij")
    to_index = lambda v: (v / half_extent + 1) * 0.5 * (n - 1)  # noqa: E731
    return relief * map_coordinates(fine, [to_index(ys), to_index(xs)], order=1, mode="nearest")


def render_frame(heights: np.ndarray, pad_bottom: float, normal_force: float, *, gel_stiffness: float = 4000.0,
                 max_depth: float = 0.0015, blur_px: float = 1.0, gain: float = 0.6,
                 rng: np.random.Generator | None = None, noise: float = 0.004) -> np.ndarray:
    """One frame [size, size, 3] from the surface heights under the pad and the pad's state.

    In contact (normal_force > 0) the gel is pressed in by normal_force / gel_stiffness (m) below
    the pad's face, and every surface point above that level deforms it. Without contact the
    frame is the background exactly (plus sensor noise, when an `rng` is given)."""
    size = heights.shape[0]
    base = background(size)
    depth = np.zeros_like(heights)
    if normal_force > 0:
        gel = pad_bottom - normal_force / gel_stiffness
        depth = np.clip(heights - gel, 0.0, max_depth)
        if blur_px > 0:
            depth = gaussian_filter(depth, blur_px)
    frame = base
    if depth.any():
        px = 1.0 / size  # gradients per pixel; the scale below makes a 1 mm bump clearly visible
        gy, gx = np.gradient(depth / max_depth * 0.5, px)
        normals = np.stack([-gx, -gy, np.ones_like(gx)], -1)
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        shade = normals @ LIGHTS.T - LIGHTS[:, 2]  # [size, size, 3]: zero where the gel is flat
        frame = base + gain * shade * 0.5 + 0.15 * (depth / max_depth)[..., None]
    if rng is not None and noise > 0:
        frame = frame + rng.normal(0.0, noise, frame.shape)
    return frame.clip(0, 1)
