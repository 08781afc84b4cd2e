"""Gated cross-attention dense block (Flamingo, Alayrac et al. 2022, section 2.3).

Inserted before frozen language-model layers:
    y = y + tanh(alpha_attn) * XAttn(LN(y), media latents, media mask)
    y = y + tanh(alpha_ff)   * FF(y)
Both alphas start at exactly 0, so at initialisation the block returns y unchanged, bit for
bit. With `ff_on_media_tokens_only`, the FF branch is applied only to tokens that see media,
so text-only input keeps the original LM even after training. The branches compute in the
block's own dtype and are added to the residual stream in its dtype, so a float32 block can sit
in a bfloat16 language model.

Shape letters: B batch, L text length, D text width, M media items, R latents per item,
Dm media width, H heads, Dh head width, Ls longest run of tokens that see one media item.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, attend, merge_heads
from .checks import check_shape
from .feedforward import FeedForward
from .gates import TanhGate
from .masks import MediaRouting

GATES = ("scalar", "vector")  # one alpha per branch, or one per channel


class GatedCrossAttentionBlock(nn.Module):
    """Text tokens [B, L, D] attend to media latents [B, M, R, Dm], behind tanh gates.

    Args:
        dim: text width D.  dim_media: media-latent width Dm.
        heads, dim_head, ff_mult: attention and feed-forward sizes.
        gate: "scalar" or "vector" (one alpha per channel).
        ff_on_media_tokens_only: apply the FF branch only where a token sees media.
        qk_norm: LayerNorm on queries and keys per head.
        mode: default media mode ("immediate", "all_previous" or "window:k").
    """

    def __init__(self, *, dim: int, dim_media: int, heads: int = 8, dim_head: int = 64, ff_mult: int = 4,
                 gate: str = "scalar", ff_on_media_tokens_only: bool = False, qk_norm: bool = False,
                 mode: str = "immediate"):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate: expected 'scalar' or 'vector', got {gate!r}")
        self.dim, self.dim_media, self.mode = dim, dim_media, mode
        self.ff_on_media_tokens_only = ff_on_media_tokens_only
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, dim_context=dim_media, heads=heads, dim_head=dim_head, qk_norm=qk_norm)
        self.attn_gate = TanhGate(dim, vector=gate == "vector")
        self.ff = FeedForward(dim, mult=ff_mult)
        self.ff_gate = TanhGate(dim, vector=gate == "vector")

    def media_kv(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the media latents, [B, M, R, Dm] -> 2 x [B, M, H, R, Dh].

        Computed once per prompt during generation and cached beside the LM's KV cache.
        """
        check_shape("media", media, "B M R Dm", Dm=self.dim_media)
        return self.attn.keys_values(media.to(self.norm.weight.dtype))

    def forward(self, x: torch.Tensor, media: torch.Tensor | None = None, media_index: torch.Tensor | None = None,
                *, mode: str | None = None, routing: MediaRouting | None = None,
                media_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, L, D]; media [B, M, R, Dm] (or its precomputed `media_kv`); media_index [B, L].

        `routing` (built once per forward and shared by all layers) replaces media_index/mode.
        """
        s = check_shape("x", x, "B L D", D=self.dim)
        dt = self.norm.weight.dtype
        if media is None and media_kv is None:  # no media at all: the attention branch adds nothing
            out, sees = x.new_zeros(x.shape, dtype=dt), x.new_zeros(s["B"], s["L"], 1, dtype=torch.bool)
        else:
            out, sees = self._cross_attend(x.to(dt), media, media_index, mode, routing, media_kv)
        x = x + self.attn_gate(out).to(x.dtype)
        ff = self.ff(x.to(dt))
        if self.ff_on_media_tokens_only:
            ff = ff.masked_fill(~sees, 0.0)
        return x + self.ff_gate(ff).to(x.dtype)

    def _cross_attend(self, x, media, media_index, mode, routing, media_kv):
        """-> (attention output [B, L, D], sees_media [B, L, 1]); zero where a token sees no media."""
        k, v = media_kv if media_kv is not None else self.media_kv(media)
        check_shape("media keys", k, "B M H R Dh", B=x.shape[0])
        B, M, H, R, Dh = k.shape
        if routing is None:
            if media_index is None:
                raise ValueError("media_index: required (or a prebuilt routing)")
            check_shape("media_index", media_index, "B L", B=x.shape[0], L=x.shape[1])
            routing = MediaRouting.build(media_index, num_media=M, num_latents=R, mode=mode or self.mode)
        xn = self.norm(x)
        if routing.mode == "immediate":
            out = self._attend_immediate(xn, k, v, routing)
        else:
            q = self.attn.queries(xn)  # [B, H, L, Dh]
            kd, vd = (t.transpose(1, 2).reshape(B, H, M * R, Dh) for t in (k, v))  # [B, H, M*R, Dh]
            out = merge_heads(attend(q, kd, vd, routing.mask))
        sees = routing.sees_media.unsqueeze(-1)
        return self.attn.to_out(out).masked_fill(~sees, 0.0), sees

    def _attend_immediate(self, xn: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          routing: MediaRouting) -> torch.Tensor:
        """Each run of tokens attends only to its own media item's R latents -> [B, L, H*Dh]."""
        B, L, D = xn.shape
        _, M, H, R, Dh = k.shape
        runs = xn.reshape(B * L, D).index_select(0, routing.token_of_slot).view(B * M, routing.run_length, D)
        q = self.attn.queries(runs)  # [B*M, H, Ls, Dh]
        o = attend(q, k.reshape(B * M, H, R, Dh), v.reshape(B * M, H, R, Dh))
        o = merge_heads(o).reshape(B * M * routing.run_length, H * Dh)
        return o.index_select(0, routing.slot_of_token).view(B, L, H * Dh)
