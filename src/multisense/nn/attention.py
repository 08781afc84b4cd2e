"""The one attention of multisense: multi-head scaled dot-product attention on
`torch.nn.functional.scaled_dot_product_attention`, as self-, cross- or latent attention.

Shape letters: ... any leading dims, N queries, K keys, H heads, Dh head width, D width.
Masks are boolean, True where a query may look at a key, or float, as SDPA's: an additive bias
on the scores, -inf where a query may not look. A query row with no allowed key returns exactly zero (Flamingo: a token that precedes every image sees nothing), never a
uniform average and never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., N, H*Dh] -> [..., H, N, Dh]"""
    return t.unflatten(-1, (heads, -1)).transpose(-2, -3)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[..., H, N, Dh] -> [..., N, H*Dh]"""
    return t.transpose(-2, -3).flatten(-2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v with q [..., H, N, Dh], k, v [..., H, K, Dh].

    `mask` broadcasts to [..., H, N, K]: bool (True = may look) or a float bias (-inf = may not).
    Rows with no allowed key are opened to every key (so SDPA sees a finite softmax) and their
    output is then set to exactly zero.
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    allowed = mask if mask.dtype == torch.bool else mask > float("-inf")
    sees_any = allowed.any(dim=-1, keepdim=True)  # [..., N, 1]
    if mask.dtype == torch.bool:
        mask = mask | ~sees_any
    else:
        mask = mask.to(q.dtype).masked_fill(~sees_any, 0.0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).masked_fill(~sees_any, 0.0)


def attend_chunks(q: torch.Tensor, chunks, *, groups: int = 0, weights: bool = False) -> tuple:
    """`attend` over keys that arrive in chunks, never all held at once (Perceiver inputs of
    100k+ tokens): the softmax is accumulated online, rescaled by the running maximum.

    q [..., H, N, Dh]; `chunks` yields (k, v, mask, group) with k, v [..., H, Kc, Dh], mask
    broadcasting to [..., H, N, Kc] (bool, True = may look; or a float bias, -inf = may not) or
    None, and group an int < `groups`.
    Returns the output [..., H, N, Dh] (rows with no allowed key: exactly zero, as in `attend`)
    and, with groups > 0, the attention mass on each group's keys [G, ..., H, N] (sums to 1
    over groups where a row saw any key, else 0), else None. With `weights`, also a list of
    each chunk's attention weights [..., H, N, Kc], those of the softmax over all chunks' keys
    (each chunk's terms are kept, so this holds all the weights at once).
    """
    scale = q.shape[-1] ** -0.5
    top = acc = total = None  # running max [..., N, 1], weighted values, softmax denominator
    # whether a row had any allowed key ([..., N, 1] once a mask is met), from the masks and not
    # from total > 0: a NaN score must show as NaN, not as a row that saw nothing
    seen = torch.zeros((), dtype=torch.bool, device=q.device)
    mass: list[torch.Tensor | float] = [0.0] * groups
    kept = []  # with `weights`: each chunk's exp(s - shift) and its running max
    for k, v, mask, group in chunks:
        s = (q @ k.transpose(-1, -2)) * scale  # [..., H, N, Kc]
        if mask is None:
            seen = torch.ones((), dtype=torch.bool, device=q.device)
        else:
            # a disallowed key's score is -inf whatever it was: NaN + -inf would stay NaN
            allowed = mask if mask.dtype == torch.bool else mask > float("-inf")
            s = s.masked_fill(~allowed, float("-inf"))
            if mask.dtype != torch.bool:
                s = s + mask.to(s.dtype)
            seen = seen | allowed.any(-1, keepdim=True)
        new_top = s.amax(-1, keepdim=True)
        if top is not None:
            new_top = torch.maximum(top, new_top)
        # -inf (no allowed key yet) is replaced by finite stand-ins, so no inf - inf is formed,
        # not even in a branch torch.where discards (its gradient would be NaN)
        shift = torch.where(torch.isinf(new_top), torch.zeros_like(new_top), new_top)
        p = torch.exp(s - shift)
        if top is None:
            acc, total = p @ v, p.sum(-1, keepdim=True)
        else:
            old = torch.where(torch.isinf(top), shift, top)
            rescale = torch.exp(old - shift)
            acc, total = acc * rescale + p @ v, total * rescale + p.sum(-1, keepdim=True)
            mass = [m * rescale for m in mass]
        if groups:
            mass[group] = mass[group] + p.sum(-1, keepdim=True)
        if weights:
            kept.append((p, new_top))
        top = new_top
    if top is None:
        raise ValueError("chunks: expected at least one chunk of keys, got none")
    denom = torch.where(seen, total, torch.ones_like(total))
    out = torch.where(seen, acc / denom, torch.zeros_like(acc))
    shares = None
    if groups:
        shares = [torch.zeros_like(total) + m for m in mass]  # a group that had no chunk: zero
        shares = torch.stack([torch.where(seen, m / denom, torch.zeros_like(m)) for m in shares]).squeeze(-1)
    if not weights:
        return out, shares
    # each chunk's terms rescaled to the final maximum, as acc and total were chunk by chunk
    final = shift
    kept = [torch.where(seen, p * torch.exp(torch.where(torch.isinf(t), final, t) - final) / denom,
                        torch.zeros_like(p)) for p, t in kept]
    return out, shares, kept


class Attention(nn.Module):
    """Multi-head attention without biases (the Flamingo/Perceiver layout).

    Args:
        dim: width of the queries' input and of the output.
        dim_context: width of the keys'/values' input (defaults to `dim`).
        heads, dim_head: number of heads and their width; inner width is heads * dim_head.
        qk_norm: LayerNorm on each head's queries and keys (stabilises large models).
    """

    def __init__(self, dim: int, *, dim_context: int | None = None, heads: int = 8, dim_head: int = 64,
                 qk_norm: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_context or dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.q_norm = nn.LayerNorm(dim_head) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim_head) if qk_norm else nn.Identity()

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """[..., N, D] -> [..., H, N, Dh]"""
        return self.q_norm(split_heads(self.to_q(x), self.heads))

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., K, Dc] -> k, v each [..., H, K, Dh] (one matmul for both)."""
        k, v = self.to_kv(context).chunk(2, dim=-1)
        return self.k_norm(split_heads(k, self.heads)), split_heads(v, self.heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *, mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x [..., N, D] attends to `context` [..., K, Dc] (itself if None) or to precomputed `kv`."""
        q = self.queries(x)
        k, v = kv if kv is not None else self.keys_values(x if context is None else context)
        return self.to_out(merge_heads(attend(q, k, v, mask)))
