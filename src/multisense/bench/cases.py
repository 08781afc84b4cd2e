"""The benchmark cases of `multisense bench`: resampler and gated cross-attention sizes, their
model FLOPs, and the passes a case runs (inference forward, training step).

FLOPs: every matmul counts 2 per multiply-add; a backward pass counts as 2 forwards (the
usual convention), so forward+backward = 3 x forward.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch

from ..nn import MediaRouting, PerceiverResampler, media_visibility


@dataclasses.dataclass(frozen=True)
class ResamplerCase:
    name: str
    dim: int
    depth: int
    num_latents: int
    heads: int
    dim_head: int
    ff_mult: int
    batch: int  # B
    media: int  # M
    frames: int  # F
    tokens: int  # S

    @property
    def label(self) -> str:
        return (f"{self.name}: D{self.dim} x{self.depth} R{self.num_latents} H{self.heads}x{self.dim_head}, "
                f"B{self.batch} M{self.media} {self.frames}x{self.tokens}")

    def build(self, device: str) -> PerceiverResampler:
        torch.manual_seed(0)
        return PerceiverResampler(dim=self.dim, depth=self.depth, num_latents=self.num_latents, heads=self.heads,
                                  dim_head=self.dim_head, ff_mult=self.ff_mult).to(device)

    def inputs(self, device: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        return torch.randn(self.batch, self.media, self.frames, self.tokens, self.dim, generator=g).to(device)

    @property
    def media_tokens(self) -> int:
        return self.batch * self.media * self.frames * self.tokens

    def forward_flops(self) -> int:
        """Matmul FLOPs of one forward pass (2 per multiply-add), as the published layer computes them."""
        D, R, inner, N = self.dim, self.num_latents, self.heads * self.dim_head, self.frames * self.tokens
        per_layer = (2 * R * D * inner  # q
                     + 2 * (N + R) * D * 2 * inner  # k, v of [media ; latents]
                     + 2 * 2 * R * (N + R) * inner  # q k^T and p v
                     + 2 * R * inner * D  # out
                     + 2 * 2 * R * D * self.ff_mult * D)  # feed-forward
        return self.batch * self.media * self.depth * per_layer

    def skipped_backward_flops(self) -> int:
        """Backward FLOPs the implementation does not execute: the media tokens need no gradient
        (frozen encoder), so the [N, 2I] x [2I, D] input gradient of each layer's K/V projection is skipped."""
        inner, N = self.heads * self.dim_head, self.frames * self.tokens
        return self.batch * self.media * self.depth * 2 * N * 2 * inner * self.dim


@dataclasses.dataclass(frozen=True)
class XAttnCase:
    batch: int
    length: int  # L
    dim: int  # D (= Dm)
    latents: int  # R
    heads: int
    dim_head: int
    ff_mult: int
    media_counts: tuple[int, ...]


def full_cases() -> tuple[list[ResamplerCase], list[str], XAttnCase, int]:
    """(resampler cases, names of those also run under bf16, xattn case, matmul size)."""
    big = dict(dim=1024, depth=6, num_latents=64, heads=8, ff_mult=4, media=1, frames=8, tokens=256)
    cases = [
        ResamplerCase("target", dim_head=128, batch=1, **big),
        ResamplerCase("target-b2", dim_head=128, batch=2, **big),
        ResamplerCase("published", dim_head=64, batch=1, **big),
        ResamplerCase("image", dim=512, depth=2, num_latents=32, heads=8, dim_head=64, ff_mult=4,
                      batch=8, media=1, frames=1, tokens=256),
    ]
    xattn = XAttnCase(batch=1, length=512, dim=1024, latents=64, heads=8, dim_head=128, ff_mult=4,
                      media_counts=(1, 8, 32))
    return cases, ["target", "target-b2", "published"], xattn, 2048


def quick_cases() -> tuple[list[ResamplerCase], list[str], XAttnCase, int]:
    small = dict(dim=64, depth=2, num_latents=8, heads=2, ff_mult=2, media=1, frames=2, tokens=16)
    cases = [ResamplerCase("target", dim_head=32, batch=1, **small),
             ResamplerCase("published", dim_head=16, batch=2, **small)]
    xattn = XAttnCase(batch=1, length=64, dim=64, latents=8, heads=2, dim_head=32, ff_mult=2, media_counts=(1, 4, 8))
    return cases, ["target"], xattn, 256


def autocast_ctx(device: str, bf16: bool):
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else nullcontext()


DENSE_WINDOW_1 = "window:1-dense"


def xattn_routing(idx: torch.Tensor, num_media: int, num_latents: int, mode: str) -> MediaRouting:
    """MediaRouting.build, except DENSE_WINDOW_1: `window:1` through the dense masked path.
    (MediaRouting.build sends window:1 to the gather path, since it is the same maths as immediate.)"""
    if mode != DENSE_WINDOW_1:
        return MediaRouting.build(idx, num_media=num_media, num_latents=num_latents, mode=mode)
    allowed = media_visibility(idx, num_media, "window:1")  # [B, L, M]
    mask = allowed.repeat_interleave(num_latents, dim=-1).unsqueeze(1)  # [B, 1, L, M*R]
    return MediaRouting(mode="window:1", sees_media=idx > 0, mask=mask)


def resampler_steps(model: PerceiverResampler, x: torch.Tensor, device: str, bf16: bool):
    """(forward, forward+backward) closures. The forward is inference (no_grad). The training step
    allocates its gradients afresh, as a step after optimizer.zero_grad() does, and frees them at
    its end (inside the timing, as the next zero_grad would), so that passes timed after it start
    from the same memory state as without it."""

    def forward():
        with torch.no_grad(), autocast_ctx(device, bf16):
            return model(x)

    def train_step():
        model.zero_grad(set_to_none=True)
        with autocast_ctx(device, bf16):
            out = model(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return forward, train_step
