"""Learned position tables over time (Flamingo's frame embeddings) that can be resampled.

A table trained for T frames serves F != T frames at inference by linear interpolation
along time (Flamingo trains on 8 frames and runs on 30). Asking for more frames than the
table holds without interpolation is an error, never a silent slice.
Shapes: table [T, D] -> embeddings [F, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrameEmbedding(nn.Module):
    def __init__(self, max_frames: int, dim: int):
        super().__init__()
        if max_frames < 1:
            raise ValueError(f"max_frames: expected a positive number of frames, got {max_frames}")
        self.weight = nn.Parameter(torch.randn(max_frames, dim) * 0.02)

    @property
    def max_frames(self) -> int:
        return self.weight.shape[0]

    def forward(self, num_frames: int, *, interpolate: bool = False) -> torch.Tensor:
        """Embeddings for `num_frames` frames, [F, D]."""
        if num_frames == self.max_frames:
            return self.weight
        if interpolate:
            # linear in time with the first and last frame pinned to the table's ends
            table = self.weight.t().unsqueeze(0)  # [1, D, T]
            return F.interpolate(table, size=num_frames, mode="linear", align_corners=True)[0].t()
        if num_frames > self.max_frames:
            raise ValueError(
                f"frames: got {num_frames} frames but the frame embeddings hold {self.max_frames}; "
                "pass interpolate_frames=True to interpolate them linearly in time")
        return self.weight[:num_frames]
