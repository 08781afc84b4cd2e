"""Vision encoder for camera streams: a Hugging Face vision model (CLIP, SigLIP, ViT...; through
`as_encoder`) or, without one, a small ViT of the library's own, applied to every frame. All
frames' patch tokens are kept, so a fusion model sees the whole stream: [N, T * P, D].

Input layout: frames [N, T, C, H, W] (or one image per stream, [N, C, H, W]) at `sample_rate`
(30 Hz), normalised as the model expects; mask [N, T] (True = the frame exists). A frame's
patch tokens share its time, k / sample_rate for frame k, whichever frames are masked; a camera
with irregular frames gives its frames' own times [N, T] (seconds from the window's start)
instead. A stream declared at another rate (`sample_rate=`) is refused; frames without one are
taken to be at 30 Hz.
Shape letters: N streams, T frames, P patch tokens per frame, D width.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.checks import check_shape
from ..nn.vit import PatchViT
from .base import EncoderOutput, as_encoder, check_rate, encode_frames, sample_times
from .registry import register_encoder


@register_encoder
class VisionEncoder(nn.Module):
    name = "vision"
    sample_rate = 30.0
    layout = "frames [N, T, C, H, W] or [N, C, H, W]; mask [N, T]; times [N, T] seconds (optional)"

    def __init__(self, *, model: nn.Module | None = None, dim: int = 64, image_size: int = 32, patch_size: int = 8,
                 channels: int = 3, depth: int = 2, heads: int = 4, dim_head: int = 16, ff_mult: int = 2,
                 **hf_options):
        super().__init__()
        if model is not None:
            self.backbone = as_encoder(model, **hf_options)
            self.dim = self.backbone.dim
        else:
            self.backbone = PatchViT(image_size=image_size, patch_size=patch_size, channels=channels, dim=dim,
                                     depth=depth, heads=heads, dim_head=dim_head, ff_mult=ff_mult)
            self.dim = dim

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None, times: torch.Tensor | None = None,
                sample_rate: float | None = None) -> EncoderOutput:
        """-> tokens [N, T * P, D], mask and times [N, T * P]; duration T / sample_rate (None
        with explicit `times`)."""
        check_rate(self, sample_rate)
        if frames.ndim == 4:
            frames = frames.unsqueeze(1)
        s = check_shape("frames", frames, "N T C H W")
        N, T = s["N"], s["T"]
        if mask is not None:
            check_shape("mask", mask, "N T", N=N, T=T)
            mask = mask.bool()
        duration = None
        if times is None:
            times = sample_times(T, self.sample_rate, device=frames.device).expand(N, T)
            duration = T / self.sample_rate
        else:
            check_shape("times", times, "N T", N=N, T=T)
            if not times.is_floating_point() or not torch.isfinite(times).all() or (times < 0).any():
                raise ValueError("times: expected each frame's finite time in seconds from the window's start "
                                 "(>= 0, float)")
        tokens = encode_frames(self.backbone, frames.unsqueeze(1), None if mask is None else mask.unsqueeze(1))
        P = tokens.shape[-2]  # [N, 1, T, P, D]: missing frames were not encoded
        tokens = tokens.reshape(N, T * P, tokens.shape[-1])
        return EncoderOutput(tokens, None if mask is None else mask.repeat_interleave(P, dim=1),
                             times.float().repeat_interleave(P, dim=1), duration)

    @classmethod
    def example(cls, n: int = 2, seconds: float = 0.2, *, image_size: int = 32, channels: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        T = max(1, round(seconds * cls.sample_rate))
        return {"frames": torch.rand(n, T, channels, image_size, image_size, generator=g),
                "mask": torch.ones(n, T, dtype=torch.bool)}
