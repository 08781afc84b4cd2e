"""The embedded vision tower: a tiny CLIP vision transformer (4 layers x 128, 32-pixel images,
4-pixel patches) trained from scratch on rendered scenes, every patch token naming the object
under it. Saved as a plain `CLIPVisionModel`; the training heads are thrown away.

Shape letters: B batch, P patches, H height, W width.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..data.images import to_pixel_values
from ..data.scenes import COLOURS, MAX_OBJECTS, SHAPES, SceneObject, object_masks, render, sample_objects
from .pretraining import pretrain, save

# Shape is what the tower learns last; for the same compute, more and smaller steps learn it
# sooner (measured: docs/history.md).
VISION_STEPS = 4600
VISION_BATCH = 16
VISION_LR = 1e-3


def vision_config(*, image_size: int = 32) -> CLIPVisionConfig:
    return CLIPVisionConfig(image_size=image_size, patch_size=4, hidden_size=128, intermediate_size=512,
                            num_hidden_layers=4, num_attention_heads=4)


# A patch belongs to the object that covers at least this share of its pixels, else to the background.
_PATCH_COVER = 0.25
# One class per (colour, shape, left-to-right rank) of the object under a patch, plus background.
PATCH_CLASSES = len(COLOURS) * len(SHAPES) * MAX_OBJECTS + 1
BACKGROUND = PATCH_CLASSES - 1  # the class of a patch no object covers


def patch_labels(objects: tuple[SceneObject, ...], *, image_size: int, patch_size: int) -> np.ndarray:
    """Int64 [P] class per patch (P = (H / patch)^2, row-major): the object covering the patch as
    one (colour, shape, rank) class, or the last class for background."""
    side = image_size // patch_size
    labels = np.full(side * side, BACKGROUND, dtype=np.int64)
    if not objects:
        return labels
    masks = object_masks(objects, image_size=image_size)[:, : side * patch_size, : side * patch_size]
    cover = masks.reshape(len(objects), side, patch_size, side, patch_size).mean(axis=(2, 4)).reshape(len(objects), -1)
    best = cover.argmax(0)  # [P] the object covering most of each patch
    hit = cover.max(0) >= _PATCH_COVER
    colours, shapes = list(COLOURS), list(SHAPES)
    classes = np.array([(colours.index(o.colour) * len(SHAPES) + shapes.index(o.shape)) * MAX_OBJECTS + rank
                        for rank, o in enumerate(objects)])
    labels[hit] = classes[best[hit]]
    return labels


def patch_shapes(labels: torch.Tensor) -> torch.Tensor:
    """`patch_labels` classes [..., P] -> the shape index of the object under each patch, or
    len(SHAPES) for background."""
    return torch.where(labels == BACKGROUND, len(SHAPES), labels // MAX_OBJECTS % len(SHAPES))


class _PatchHeads(nn.Module):
    """Two dense losses on a vision tower's patch tokens: each token names the object under it
    as one (colour, shape, left-to-right rank) class, and separately its shape (or background).

    Why dense labels and no contrastive loss against captions: contrastive training alone gave a
    tiny tower whose patch tokens hardly say the shape nor which object they belong to. The
    Flamingo resampler starts by averaging tokens, which keeps the binding of colour, shape and
    order only if each token holds the *conjunction*: hence one class per (colour, shape, rank).
    Shape is what the tower learns last and what the demo's captions failed on: hence its own
    head, and no contrastive loss (nor its text tower) to spend steps on in the same time
    (measured: docs/history.md). Only the tower is saved; the heads are thrown away.
    """

    def __init__(self, tower: CLIPVisionModel):
        super().__init__()
        self.tower = tower
        width = tower.config.hidden_size
        self.head = nn.Linear(width, PATCH_CLASSES)
        self.shape_head = nn.Linear(width, len(SHAPES) + 1)  # + background

    def forward(self, pixel_values: torch.Tensor, patch_labels: torch.Tensor) -> SimpleNamespace:
        tokens = self.tower(pixel_values=pixel_values).last_hidden_state[:, 1:]  # [B, P, width], no class token
        loss = (nn.functional.cross_entropy(self.head(tokens).transpose(1, 2), patch_labels)
                + nn.functional.cross_entropy(self.shape_head(tokens).transpose(1, 2), patch_shapes(patch_labels)))
        return SimpleNamespace(loss=loss)


def _patch_batches(*, batch_size: int, image_size: int, patch_size: int, seed: int):
    """Endless batches of fresh scenes: pixel_values [B, 3, H, W] and `patch_labels` [B, P]."""
    rng = np.random.default_rng(seed)
    while True:
        objects = [sample_objects(rng, image_size=image_size) for _ in range(batch_size)]
        images = np.stack([render(scene, rng, image_size=image_size) for scene in objects])
        labels = np.stack([patch_labels(scene, image_size=image_size, patch_size=patch_size) for scene in objects])
        yield {"pixel_values": to_pixel_values(images), "patch_labels": torch.from_numpy(labels)}


def pretrain_vision(
    out_dir: str | Path,
    *,
    steps: int = VISION_STEPS,
    batch_size: int = VISION_BATCH,
    lr: float = VISION_LR,
    image_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train a tiny CLIP vision tower (a ViT) from scratch on rendered scenes, every patch token
    naming the object under it (`_PatchHeads`); saved as a `CLIPVisionModel`."""
    torch.manual_seed(seed)
    tower = CLIPVisionModel(vision_config(image_size=image_size))
    batches = _patch_batches(batch_size=batch_size, image_size=image_size, patch_size=tower.config.patch_size,
                             seed=seed)
    summary = pretrain(_PatchHeads(tower), batches, steps=steps, lr=lr, desc="pretraining vision", progress=progress)
    return save(tower, None, out_dir, summary)
