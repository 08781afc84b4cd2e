"""Position encodings: learned tables over time (Flamingo's frame embeddings) that can be resampled,
and Fourier features over real coordinates (the Perceiver's).

A table trained for T frames serves F != T frames at inference by linear interpolation
along time (Flamingo trains on 8 frames and runs on 30). Asking for more frames than the
table holds without interpolation is an error, never a silent slice. In a padded batch each
clip gets the table at its own length: a 4-frame clip reads the same embeddings alone and
padded to 8 frames.
Shapes: table [T, D] -> embeddings [F, D]; per clip [B, M, F, D] (B batch, M clips).
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
        # unit scale, as OpenFlamingo initialises its frame table: the frames differ from step 0 by
        # as much as (standardised) features do. At 0.02 they barely differed at the first steps,
        # and video training sat at chance while the table grew (measured: docs/history.md).
        self.weight = nn.Parameter(torch.randn(max_frames, dim))

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

    def for_clips(self, num_frames: int, frame_mask: torch.Tensor | None = None, *,
                  interpolate: bool = False) -> torch.Tensor:
        """Embeddings of a batch of clips padded to `num_frames`: [F, D] without a mask, else
        [B, M, F, D] for `frame_mask` [B, M, F] (True = the frame exists).

        A clip's length is its span, up to and including its last real frame, so a frame keeps
        its place in time; frames past the span are padding and get zeros. With interpolation,
        each clip gets the table resampled to its own length, not to the batch's."""
        if frame_mask is None:
            return self(num_frames, interpolate=interpolate)
        frame_mask = frame_mask.bool()
        steps = torch.arange(1, num_frames + 1, device=frame_mask.device)
        span = (frame_mask * steps).amax(-1)  # [B, M] last real frame + 1 (0: an empty item)
        longest = int(span.max())
        if not interpolate:  # every clip reads a prefix of the same table
            table = self(longest) if longest else self.weight[:0]
            return F.pad(table, (0, 0, 0, num_frames - longest)).expand(*span.shape, -1, -1)
        lengths = span.unique().tolist()  # at most F distinct spans: one small interpolation each
        tables = self.weight.new_zeros(longest + 1, num_frames, self.weight.shape[1])
        for n in lengths:
            if n:
                tables[n, :n] = self(n, interpolate=True)
        return tables[span]  # [B, M, F, D]



class FourierFeatures(nn.Module):
    """Fourier position features over real coordinates (Perceiver, Jaegle et al. 2021, sec. 3.2).

    coords [..., N, P] in [-1, 1] (a timestamp scaled by the window, pixel x and y...), per sample
    -> [..., N, P * (2 * num_bands + 1)]: each coordinate itself, then sin(pi f x) and cos(pi f x)
    for `num_bands` frequencies f spaced linearly from 1 to max_freq / 2 (max_freq: the Nyquist
    rate of the finest detail, e.g. the number of samples across the range). No parameters."""

    def __init__(self, *, pos_dims: int = 1, num_bands: int = 8, max_freq: float = 32.0):
        super().__init__()
        if pos_dims < 1 or num_bands < 1 or max_freq < 2:
            raise ValueError(f"FourierFeatures: expected pos_dims >= 1, num_bands >= 1, max_freq >= 2, got "
                             f"{pos_dims}, {num_bands}, {max_freq}")
        self.pos_dims = pos_dims
        self.register_buffer("freqs", torch.linspace(1.0, max_freq / 2, num_bands), persistent=False)

    @property
    def dim(self) -> int:
        return self.pos_dims * (2 * self.freqs.numel() + 1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        if coords.shape[-1] != self.pos_dims:
            raise ValueError(f"positions: expected {self.pos_dims} coordinate(s) per token in the last dimension, "
                             f"got shape {list(coords.shape)}")
        x = coords.unsqueeze(-1) * self.freqs.to(coords.dtype) * torch.pi  # [..., N, P, bands]
        return torch.cat((coords, x.sin().flatten(-2), x.cos().flatten(-2)), dim=-1)
