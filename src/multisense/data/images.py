"""Images -> the vision encoder's input: float tensors [C, H, W] (C=3, RGB, H=W=image_size).

`to_pixel_values` maps the procedural images (numpy, [0, 1]) to [-1, 1]; `image_to_tensor` reads a
Pillow image with the recipe of Hugging Face image processors.

The same recipe as Hugging Face image processors: resize the short side to `image_size`
(bicubic), centre-crop a square, scale to [0, 1], then normalise with `mean` and `std`. The
defaults 0.5/0.5 give the range [-1, 1] that `to_pixel_values` feeds the demo's
encoder; pass a CLIP's own mean/std for a pretrained CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def to_pixel_values(images: np.ndarray) -> torch.Tensor:
    """Float images in [0, 1], any leading dims then [C, H, W] -> the same in [-1, 1] (mean = std = 0.5)."""
    return (torch.from_numpy(np.ascontiguousarray(images)) - 0.5) / 0.5


def image_to_tensor(image: Image.Image, image_size: int, *, mean: float | Sequence[float] = 0.5,
                    std: float | Sequence[float] = 0.5) -> torch.Tensor:
    """One Pillow image (any mode) -> [3, image_size, image_size], normalised."""
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected a positive int, got {image_size!r}")
    image = image.convert("RGB")  # palette, grey, RGBA and CMYK files all become 3 channels
    w, h = image.size
    scale = image_size / min(w, h)
    # max(): rounding must never leave the long side shorter than the crop
    size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
    if size != (w, h):
        image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    mean_t, std_t = normalisation(mean, std)
    return (x - mean_t) / std_t


def normalisation(mean: float | Sequence[float], std: float | Sequence[float],
                  where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """`mean` and `std` as [C, 1, 1] tensors (C = 1 or 3), checked: a std of 0 or a non-finite
    value would turn every image into inf or NaN. Errors name `where + "mean"` / `where + "std"`
    (`where`: a config section, e.g. "data.")."""
    tensors = {}
    for name, value in (("mean", mean), ("std", std)):
        t = torch.as_tensor(value, dtype=torch.float32).reshape(-1, 1, 1)
        if t.numel() not in (1, 3):
            raise ValueError(f"{where}{name}: expected a float or 3 per-channel values, got {value!r}")
        if not torch.isfinite(t).all() or (name == "std" and not (t > 0).all()):
            expected = "finite values > 0" if name == "std" else "finite values"
            raise ValueError(f"{where}{name}: expected {expected}, got {value!r}")
        tensors[name] = t
    return tensors["mean"], tensors["std"]
