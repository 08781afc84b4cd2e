"""Object-slot supervision: latent k of a media item names the k-th object in it.

A training objective for tasks whose media come with object annotations (the demo's scenes).
One linear head per attribute (colour, shape, ...) reads, from each of the first K latents
of every media item, that attribute of the item's k-th object, or "no object" where the item
has fewer; the mean cross-entropy, times `weight`, is added to the LM loss as `aux_loss`.

Why: trained on captions and questions alone, the resampler's latents do not hold one object
each, and "what colour is the triangle" is answered with some colour present in the scene. With
one object per latent, and a query that names the object, the lookup forms (measured:
docs/history.md).

Shape letters: B batch, M media items, R latents per item, K supervised latents (K <= R),
A attributes, D latent width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..tokens import IGNORE_INDEX
from .distributed import ObjectiveWrapper


class LatentObjectLoss(ObjectiveWrapper):
    """Wraps a plain FlamingoModel (for DDP or FSDP2, wrap this objective: its heads train too,
    `distributed.wrap`): forward takes the usual batch plus
    `object_labels` [B, M, K, A] (class index per attribute; `num_classes[a]` means no object;
    IGNORE_INDEX skips) and returns the model's output with `aux_loss` = weight * the cross-entropy
    per counted label.

    The heads live here, not in the model: they are a training device and are not saved.
    """

    def __init__(self, model: nn.Module, *, num_classes: Sequence[int], weight: float = 1.0):
        if weight <= 0:
            raise ValueError(f"weight: expected > 0, got {weight}")
        if not num_classes or min(num_classes) < 1:
            raise ValueError(f"num_classes: expected one positive count per attribute, got {list(num_classes)}")
        super().__init__(model)
        self.weight = weight
        dim = model.config.dim_media
        self.heads = nn.ModuleList(nn.Linear(dim, n + 1) for n in num_classes)  # + "no object"

    def forward(self, object_labels: torch.Tensor, **batch):
        out = self.model(**batch, output_media_latents=True)
        latents = out.media_latents
        if latents is None:
            raise ValueError("object_labels: given for a batch without media")
        B, M, R, _ = latents.shape
        if object_labels.ndim != 4 or object_labels.shape[:2] != (B, M) or object_labels.shape[-1] != len(self.heads):
            raise ValueError(f"object_labels: expected [B={B}, M={M}, K, A={len(self.heads)}], "
                             f"got {list(object_labels.shape)}")
        K = object_labels.shape[2]
        if K > R:
            raise ValueError(f"object_labels: {K} objects per item, but the resampler has only {R} latents")
        slots = latents[:, :, :K]  # [B, M, K, D]
        counted = (object_labels != IGNORE_INDEX).sum().clamp(min=1)  # all skipped: zero, not NaN
        total = sum(nn.functional.cross_entropy(head(slots).flatten(0, 2).float(), object_labels[..., a].flatten(),
                                                ignore_index=IGNORE_INDEX, reduction="sum")
                    for a, head in enumerate(self.heads))
        out.aux_loss = self.weight * total / counted
        return out
