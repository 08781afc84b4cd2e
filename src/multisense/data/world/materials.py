"""Materials of the touch world: surfaces made from texture photographs that scikit-image ships
(brick, grass, gravel) and a smooth one, as height maps with a friction coefficient each. They
stand in for the lecture's fabrics: "does this feel like silk or burlap?".

Each material has two height maps of the same surface: a coarse one (64 x 64) for MuJoCo's
height field, which carries the contacts (a finer field under the pad made it sink and stick),
and a fine one (256 x 256) that the library's tactile and audio rendering read. Heights are in
[0, 1], scaled to `relief` metres by the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

COARSE = 64
FINE = 256


@dataclass(frozen=True)
class Material:
    name: str
    friction: float  # sliding friction coefficient against the finger pad
    relief: float  # peak-to-valley height of the texture (m)
    stands_for: str  # the fabric it plays in the questions


MATERIALS = (
    Material("smooth", friction=0.3, relief=0.0002, stands_for="silk"),
    Material("brick", friction=0.8, relief=0.0015, stands_for="canvas"),
    Material("grass", friction=0.6, relief=0.0012, stands_for="wool"),
    Material("gravel", friction=1.0, relief=0.0020, stands_for="burlap"),
)
NAMES = tuple(m.name for m in MATERIALS)


def material(name: str) -> Material:
    for m in MATERIALS:
        if m.name == name:
            return m
    raise ValueError(f"material: expected one of {list(NAMES)}, got {name!r}")


def resize(img: np.ndarray, size: int) -> np.ndarray:
    from skimage import transform

    return transform.resize(img, (size, size), order=1, anti_aliasing=True, preserve_range=True)


@lru_cache(maxsize=None)
def height_maps(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(coarse [64, 64], fine [256, 256]) float64 heights in [0, 1] of material `name`."""
    material(name)
    if name == "smooth":  # a gentle low-frequency undulation: smooth to the touch, not flat
        y, x = np.mgrid[0:FINE, 0:FINE] / FINE
        fine = 0.5 + 0.25 * np.sin(2 * np.pi * 1.5 * x) * np.sin(2 * np.pi * 1.0 * y + 0.4)
    else:
        import skimage.data

        photo = getattr(skimage.data, name)().astype(np.float64)  # [512, 512] grey levels
        fine = resize(photo, FINE)
    fine = (fine - fine.min()) / max(fine.max() - fine.min(), 1e-12)
    coarse = resize(fine, COARSE)  # not re-stretched: its peaks stay at or below the fine map's
    fine.setflags(write=False)
    coarse.setflags(write=False)
    return coarse, fine


@lru_cache(maxsize=None)
def appearance(name: str, size: int = 128) -> np.ndarray:
    """[size, size, 3] uint8: the photograph as the camera sees the surface (greyscale, as shipped)."""
    _, fine = height_maps(name)
    grey = resize(fine, size)
    img = np.repeat((40 + 180 * grey)[..., None], 3, axis=-1).clip(0, 255).astype(np.uint8)
    img.setflags(write=False)
    return img
