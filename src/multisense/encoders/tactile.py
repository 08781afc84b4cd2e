"""Tactile encoder for vision-based touch sensors (GelSight, Yuan et al. 2017; DIGIT, Lambeta et
al. 2020): a camera behind an elastomer pad films its deformation, so touch arrives as a local
video stream. Each frame, optionally minus the no-contact frame (only the deformation is left),
goes through a small ViT; a Perceiver Resampler (Flamingo's) compresses the stream to a few
tactile tokens.

Input layout: frames [N, T, C, H, W] in [0, 1] at `sample_rate` (60 Hz), mask [N, T] (True = the
frame exists), reference [N, C, H, W]: the sensor's frame without contact. Every tactile token
summarises the whole stream (the resampler's latents attend to all of its frames), so each sits
at the middle of the stream's frame times, (T - 1) / 2 / sample_rate, whichever frames are
masked. A stream declared at another rate (`sample_rate=`) is refused: the resampler's frame
embeddings are per frame at 60 Hz; frames without one are taken to be at that rate.
Shape letters: N streams, T frames, P = (H / patch)^2 patches per frame, D width, R tactile tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.checks import check_shape
from ..nn.resampler import PerceiverResampler
from ..nn.vit import PatchViT
from .base import EncoderOutput, check_rate, encode_frames
from .registry import register_encoder


@register_encoder
class TactileEncoder(nn.Module):
    name = "tactile"
    sample_rate = 60.0
    layout = "frames [N, T, C, H, W] in [0, 1]; mask [N, T]; reference [N, C, H, W] (the no-contact frame)"

    def __init__(self, *, dim: int = 64, image_size: int = 32, patch_size: int = 8, channels: int = 3,
                 depth: int = 2, heads: int = 4, dim_head: int = 16, ff_mult: int = 2, num_tokens: int = 4,
                 resampler_depth: int = 1, max_frames: int = 256, background_subtract: bool = True):
        super().__init__()
        self.dim, self.num_tokens, self.background_subtract = dim, num_tokens, background_subtract
        self.max_frames = max_frames
        self.vit = PatchViT(image_size=image_size, patch_size=patch_size, channels=channels, dim=dim, depth=depth,
                            heads=heads, dim_head=dim_head, ff_mult=ff_mult)
        self.resampler = PerceiverResampler(dim=dim, depth=resampler_depth, num_latents=num_tokens, heads=heads,
                                            dim_head=dim_head, ff_mult=ff_mult, max_frames=max_frames,
                                            interpolate_frames=False)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None,
                reference: torch.Tensor | None = None, sample_rate: float | None = None) -> EncoderOutput:
        """-> tokens [N, R, D]; mask [N, R]: False for a stream with no frame at all; times [N, R]."""
        check_rate(self, sample_rate)
        s = check_shape("frames", frames, "N T C H W", C=self.vit.channels, H=self.vit.image_size,
                        W=self.vit.image_size)
        N, T = s["N"], s["T"]
        if T > self.max_frames:
            raise ValueError(f"frames: {T} frames ({T / self.sample_rate:g} s at {self.sample_rate:g} Hz), more than "
                             f"this encoder's max_frames={self.max_frames}; build it with a larger "
                             "max_frames or give a shorter window")
        if mask is not None:
            check_shape("mask", mask, "N T", N=N, T=T)
            mask = mask.bool()
        if self.background_subtract:
            if reference is None:
                raise ValueError("reference: background_subtract=True needs the no-contact frame [N, C, H, W] "
                                 "(or build the encoder with background_subtract=False)")
            check_shape("reference", reference, "N C H W", N=N, C=s["C"], H=s["H"], W=s["W"])
            frames = frames - reference.unsqueeze(1)
        item_mask = None if mask is None else mask.unsqueeze(1)  # one media item of T frames per stream
        tokens = encode_frames(self.vit, frames.unsqueeze(1), item_mask)  # [N, 1, T, P, D], missing frames skipped
        out = self.resampler(tokens, item_mask)[:, 0]  # [N, R, D]
        present = None if mask is None else mask.any(-1, keepdim=True).expand(N, self.num_tokens)
        middle = out.new_full((N, self.num_tokens), (T - 1) / 2 / self.sample_rate, dtype=torch.float32)
        return EncoderOutput(out, present, middle, T / self.sample_rate)

    @classmethod
    def example(cls, n: int = 2, seconds: float = 0.5, *, image_size: int = 32, channels: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        T = max(1, round(seconds * cls.sample_rate))
        frames = torch.rand(n, T, channels, image_size, image_size, generator=g)
        return {"frames": frames, "mask": torch.ones(n, T, dtype=torch.bool), "reference": frames[:, 0]}
