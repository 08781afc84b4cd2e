"""A small Vision Transformer (Dosovitskiy et al. 2021) for the sensor encoders: non-overlapping
patches embedded by a strided convolution, learned positions, pre-norm transformer layers, no class
token. Shapes: [N, C, H, W] -> [N, P, D], P = (H / patch_size)^2 patches.
"""

from __future__ import annotations

import torch
from torch import nn

from .perceiver import TransformerLayer


class PatchViT(nn.Module):
    """A small ViT: [N, C, H, W] -> patch tokens [N, P, D] (no class token), pre-norm layers."""

    def __init__(self, *, image_size: int, patch_size: int, channels: int, dim: int, depth: int, heads: int,
                 dim_head: int, ff_mult: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size: {patch_size} does not divide image_size {image_size}")
        self.image_size, self.channels = image_size, channels
        self.patch = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.randn((image_size // patch_size) ** 2, dim) * 0.02)
        self.layers = nn.ModuleList(TransformerLayer(dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # [N, P, D]
        for layer in self.layers:
            tokens = layer(tokens)
        return self.norm(tokens)
