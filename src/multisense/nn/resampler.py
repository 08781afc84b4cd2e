"""Perceiver Resampler (Flamingo, Alayrac et al. 2022, appendix A.1.1).

Compresses any number of frames of visual tokens to a fixed set of R latents per media item.
Each of `depth` layers: the latents attend to [media tokens ; latents] (the latents are keys
and values too), pre-LayerNorm on both, then a feed-forward; a final LayerNorm. No biases in
the projections or the feed-forward. With dim=1024, depth=6, num_latents=64, heads=8,
dim_head=64, ff_mult=4 and no frame embeddings this is the parameter layout of public
Flamingo-style checkpoints.

Shape letters: B batch, M media items, F frames, S tokens per frame, D width, R latents.
Input [B, M, F, S, D] with an optional frame mask [B, M, F] (True = the frame exists);
output [B, M, R, D]. Every media item is resampled on its own.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .checks import check_shape
from .feedforward import FeedForward
from .posemb import FrameEmbedding


class ResamplerLayer(nn.Module):
    def __init__(self, dim: int, *, heads: int, dim_head: int, ff_mult: int):
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=heads, dim_head=dim_head)
        self.ff = FeedForward(dim, mult=ff_mult)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [N', N, D] media tokens, latents [N', R, D], mask [N', 1, 1, N+R] or None."""
        lat_n = self.norm_latents(latents)
        # one projection over [media ; latents] is a single large matmul, the bulk of the cost
        kv_in = torch.cat((self.norm_media(x), lat_n), dim=-2)
        latents = latents + self.attn(lat_n, kv_in, mask=mask)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """[B, M, F, S, D] (+ frame mask [B, M, F]) -> [B, M, R, D].

    Args:
        dim: width of the visual tokens and of the latents.
        depth, num_latents, heads, dim_head, ff_mult: the usual transformer sizes.
        max_frames: size of the learned frame-embedding table (None: no frame embeddings).
        interpolate_frames: default for resampling the frame table to another frame count.
    """

    def __init__(self, *, dim: int, depth: int = 6, num_latents: int = 64, heads: int = 8, dim_head: int = 64,
                 ff_mult: int = 4, max_frames: int | None = None, interpolate_frames: bool = False):
        super().__init__()
        self.dim = dim
        self.num_latents = num_latents
        self.interpolate_frames = interpolate_frames
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.frame_embs = FrameEmbedding(max_frames, dim) if max_frames else None
        self.layers = nn.ModuleList(
            ResamplerLayer(dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, *,
                interpolate_frames: bool | None = None) -> torch.Tensor:
        s = check_shape("x", x, "B M F S D", D=self.dim)
        B, M, F, S = s["B"], s["M"], s["F"], s["S"]
        if self.frame_embs is not None:
            interp = self.interpolate_frames if interpolate_frames is None else interpolate_frames
            x = x + self.frame_embs(F, interpolate=interp).unsqueeze(1)  # [F, 1, D] over S
        x = x.reshape(B * M, F * S, self.dim)
        mask = None
        if frame_mask is not None:
            check_shape("frame_mask", frame_mask, "B M F", B=B, M=M, F=F)
            # a missing frame hides its S tokens; the latents themselves are always visible
            token_mask = frame_mask.bool().reshape(B * M, F, 1).expand(B * M, F, S).reshape(B * M, F * S)
            keep_latents = token_mask.new_ones(B * M, self.num_latents)
            mask = torch.cat((token_mask, keep_latents), dim=-1)[:, None, None, :]
        latents = self.latents.expand(B * M, -1, -1)
        for layer in self.layers:
            latents = layer(x, latents, mask)
        return self.norm(latents).view(B, M, self.num_latents, self.dim)
