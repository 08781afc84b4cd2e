"""scikit-learn's handwritten digit scans (real data shipped with the package, no download):
the numeral of one scan (`digits`) and the sum of two (`digit_sum`). A fixed seeded 30% of the
scans is held out for evaluation.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .base import DIGITS, MARKER, SPLITS, SUMS, ClassificationTask, Shot, Task

DIGITS_EVAL_FRACTION = 0.3
_DIGITS_SPLIT_SEED = 0  # fixed forever: changing it would leak eval scans into old checkpoints

@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def digit_images(image_size: int) -> torch.Tensor:
    """Every scan upsampled (bilinear) to [N, 1, H, W] in [-1, 1], ink bright on dark."""
    images, _ = _digits()
    x = torch.nn.functional.interpolate(torch.from_numpy(images)[:, None], size=(image_size, image_size),
                                        mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


@functools.lru_cache(maxsize=2)
def digit_split(split: str) -> np.ndarray:
    """Sorted indices of the scans in `split`: a fixed seeded permutation, 30% held out for eval."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    _, labels = _digits()
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(labels))
    n_eval = round(len(labels) * DIGITS_EVAL_FRACTION)
    out = np.sort(order[:n_eval] if split == "eval" else order[n_eval:])
    out.flags.writeable = False  # cached and shared
    return out


@functools.lru_cache(maxsize=2)
def _digit_pools(split: str) -> tuple[np.ndarray, ...]:
    _, labels = _digits()
    idx = digit_split(split)
    return tuple(idx[labels[idx] == d] for d in range(10))


def _digit_media(indices: np.ndarray, image_size: int) -> list[torch.Tensor]:
    """One RGB frame [1, 3, H, W] per scan index."""
    images = digit_images(image_size)[torch.from_numpy(np.asarray(indices))].expand(-1, 3, -1, -1)
    return [x[None].contiguous() for x in images]


class Digits(ClassificationTask):
    """The numeral of one handwritten digit scan."""

    name = "digits"
    classes = answers = DIGITS
    prompt = f"digit : {MARKER}"

    def draw(self, rng, classes, split):
        pools = _digit_pools(split)
        indices = np.empty(len(classes), dtype=np.int64)
        for c in np.unique(classes):
            where = np.flatnonzero(classes == c)
            # Distinct scans within an episode: the query is never a copy of a demonstration.
            indices[where] = rng.choice(pools[c], size=len(where), replace=False)
        return [[m] for m in _digit_media(indices, self.image_size)]


class DigitSum(Task):
    """Two digit scans and their sum: "<image> plus <image> is 12"."""

    name = "digit_sum"
    answers = SUMS
    prompt = f"{MARKER} plus {MARKER} is"

    def episode_shots(self, rng, shots, split):
        _, labels = _digits()
        indices = rng.choice(digit_split(split), size=2 * (shots + 1), replace=False).reshape(-1, 2)
        media = _digit_media(indices.reshape(-1), self.image_size)
        return [Shot(media[2 * i: 2 * i + 2], self.prompt, str(labels[a] + labels[b]))
                for i, (a, b) in enumerate(indices)]

    def text_shots(self, rng, count):
        return [(self.prompt.replace(MARKER, str(a), 1).replace(MARKER, str(b), 1), str(a + b))
                for a, b in rng.integers(10, size=(count, 2))]
