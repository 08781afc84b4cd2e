"""Perceiver Resampler (Flamingo, Alayrac et al. 2022, appendix A.1.1).

Compresses any number of frames of visual tokens to a fixed set of R latents per media item.
Every media item is resampled on its own. Each of `depth` layers is the published math:

    xn = LN_media(x);  ln = LN_latents(lat)
    q = W_q ln;  k, v = W_kv [xn ; ln]          # the latents are keys and values too
    lat = lat + W_o softmax(q k^T / sqrt(Dh)) v
    lat = lat + FF(lat)

then a final LayerNorm. No biases in the projections or the feed-forward. With dim=1024, depth=6,
num_latents=64, heads=8, dim_head=64, ff_mult=4 and no frame embeddings this is the parameter
layout of public Flamingo-style checkpoints. `ResamplerLayer.forward` is that math, line for
line; `ResamplerLayer.fused` computes the same thing fast, and is tested against it.

Shape letters: B batch, M media items, F frames, S tokens per frame, D width, R latents,
N = F*S media tokens per item, B' = B*M, T = N+R keys, H heads, Dh head width, I = H*Dh.
Input [B, M, F, S, D] with an optional frame mask [B, M, F] (True = the frame exists);
output [B, M, R, D].

Speed (the fused path). About three quarters of the work is each layer's key/value projection
of the N media tokens (docs/benchmarks.md), so each layer is arranged around that one matmul:
  * The media tokens are the same in every layer, so their LayerNorm *normalisation* is
    computed once per forward, and each layer folds its LayerNorm affine into its weight:
        W (gamma * xhat + beta) = (W * gamma) xhat + W beta
    ([2I, D] work per layer instead of [N, D] work per layer and item).
  * With the affine folded, the backward pass never needs the gradient of the normalised
    media tokens (a [N, 2I] x [2I, D] matmul per layer) unless the media themselves need one;
    they usually come from a frozen encoder. gamma's gradient is read off the weight's.
  * K and V are written straight into their own buffers, media rows then latent rows,
    rather than concatenated and split: those copies, on freshly page-faulted memory, cost
    a fifth of a training step. The buffers are token-major, [T, B', I], so that all media
    items' rows form one matrix: one matmul for all items, forward and backward.
  * Under autocast the normalised media tokens are cast to the compute dtype once.
  * Large temporaries (the folded weights; without autograd, K and V and the bf16 copies of
    the weights that autocast makes) are buffers shared by the layers of one forward pass,
    not fresh allocations page-faulted in anew in every layer.
The parameters keep the published names and shapes; outputs and gradients equal the plain
layer's up to float rounding (tests/nn/test_resampler_fused.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, attend, merge_heads, split_heads
from .checks import check_shape
from .feedforward import FeedForward
from .posemb import FrameEmbedding


class ResamplerLayer(nn.Module):
    """One resampler layer: the latents [B', R, D] attend to [media tokens ; latents]."""

    def __init__(self, dim: int, *, heads: int, dim_head: int, ff_mult: int, qk_norm: bool = False):
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=heads, dim_head=dim_head, qk_norm=qk_norm)
        self.ff = FeedForward(dim, mult=ff_mult)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The published math. x [B', N, D] media tokens; latents [B', R, D]; mask [B', 1, 1, T]
        (True = a key the latents may see) or None."""
        xn, ln = self.norm_media(x), self.norm_latents(latents)
        q = self.attn.queries(ln)  # [B', H, R, Dh]
        k, v = self.attn.keys_values(torch.cat((xn, ln), dim=-2))  # [B', H, T, Dh]
        latents = latents + self.attn.to_out(merge_heads(attend(q, k, v, mask)))
        return latents + self.ff(latents)

    def fused(self, x_t: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor | None,
              scratch: dict | None = None) -> torch.Tensor:
        """`forward`, fast. x_t [N, B', D]: the media tokens LayerNorm-normalised *without*
        affine, token-major, shared by all layers (PerceiverResampler.forward); latents
        [B', R, D]; mask [B', 1, 1, T] or None. `scratch`: buffers handed from layer to layer
        within one forward pass."""
        scratch = {} if scratch is None else scratch
        dev = x_t.device.type
        inference = not torch.is_grad_enabled()
        cast = None  # inference under autocast: weight casts into shared buffers (see _linear)
        if inference and torch.is_autocast_enabled(dev):
            cast = scratch.setdefault("cast", {"like": x_t.new_empty(0)})
        attn, norm, w = self.attn, self.norm_media, self.attn.to_kv.weight
        lat_n = self.norm_latents(latents)
        q = attn.q_norm(split_heads(_linear(lat_n, attn.to_q, cast), attn.heads))  # [B', H, R, Dh]
        if not inference:
            k, v = _MediaLatentKV.apply(x_t, lat_n, w, norm.weight, norm.bias, scratch)
        else:  # no K/V is kept for a backward pass, so all layers share two buffers
            shape = (x_t.shape[0] + lat_n.shape[1], x_t.shape[1], w.shape[0] // 2)
            k, v = _scratch(scratch, "k", shape, x_t), _scratch(scratch, "v", shape, x_t)
            with torch.autocast(dev, enabled=False):
                lat_t = lat_n.transpose(0, 1).to(x_t.dtype).contiguous()
                _project_kv(x_t, lat_t, w, norm.weight, norm.bias, k, v, scratch)
        o = attend(q, attn.k_norm(_heads(k, attn.heads)), _heads(v, attn.heads), mask)
        latents = latents + _linear(merge_heads(o), attn.to_out, cast)
        return latents + _ff(self.ff, latents, cast)


class PerceiverResampler(nn.Module):
    """[B, M, F, S, D] (+ frame mask [B, M, F]) -> [B, M, R, D].

    Args:
        dim: width of the visual tokens and of the latents.
        depth, num_latents, heads, dim_head, ff_mult: the usual transformer sizes.
        max_frames: size of the learned frame-embedding table (None: no frame embeddings).
        interpolate_frames: default for resampling the frame table to another frame count.
        qk_norm: LayerNorm on each head's queries and keys.
        fused: run `ResamplerLayer.fused` (the default) or the plain `ResamplerLayer.forward`.
    """

    def __init__(self, *, dim: int, depth: int = 6, num_latents: int = 64, heads: int = 8, dim_head: int = 64,
                 ff_mult: int = 4, max_frames: int | None = None, interpolate_frames: bool = False,
                 qk_norm: bool = False, fused: bool = True):
        super().__init__()
        self.dim = dim
        self.num_latents = num_latents
        self.interpolate_frames = interpolate_frames
        self.fused = fused
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.frame_embs = FrameEmbedding(max_frames, dim) if max_frames else None
        self.layers = nn.ModuleList(
            ResamplerLayer(dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult, qk_norm=qk_norm)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, *,
                interpolate_frames: bool | None = None) -> torch.Tensor:
        s = check_shape("x", x, "B M F S D", D=self.dim)
        B, M, F_, S = s["B"], s["M"], s["F"], s["S"]
        if frame_mask is not None:
            check_shape("frame_mask", frame_mask, "B M F", B=B, M=M, F=F_)
            frame_mask = frame_mask.bool()
        if self.frame_embs is not None:
            interp = self.interpolate_frames if interpolate_frames is None else interpolate_frames
            x = x + self.frame_embs.for_clips(F_, frame_mask, interpolate=interp).unsqueeze(-2)  # over S
        x = x.reshape(B * M, F_ * S, self.dim)
        mask = None
        if frame_mask is not None:
            # a missing frame hides its S tokens; the latents themselves are always visible
            token_mask = frame_mask.reshape(B * M, F_, 1).expand(B * M, F_, S).reshape(B * M, F_ * S)
            keep_latents = token_mask.new_ones(B * M, self.num_latents)
            mask = torch.cat((token_mask, keep_latents), dim=-1)[:, None, None, :]
        latents = self.latents.expand(B * M, -1, -1)
        if self.fused:
            latents = self._fused_layers(x, latents, mask)
        else:
            for layer in self.layers:
                latents = layer(x, latents, mask)
        return self.norm(latents).view(B, M, self.num_latents, self.dim)

    def _fused_layers(self, x: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The media LayerNorm's normalisation, once for all layers (each folds in its own affine),
        token-major [N, B', D] (a no-op copy for one media item), in the dtype the K/V matmuls run
        in (autocast's, else the parameters'); then every layer's `fused` step."""
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.latents.dtype
        x_ts: dict[float, torch.Tensor] = {}  # keyed by eps, in case layers were built with different ones
        scratch: dict = {}  # buffers shared by the layers (see _scratch, _linear)
        for layer in self.layers:
            eps = layer.norm_media.eps
            if eps not in x_ts:
                x_ts[eps] = F.layer_norm(x, (self.dim,), eps=eps).to(dt).transpose(0, 1).contiguous()
            latents = layer.fused(x_ts[eps], latents, mask, scratch)
        return latents

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Where the latents look: the last layer's attention over the media tokens, mean over heads.

        [B, M, F, S, D] -> [B, M, R, F*S]; each row sums to at most 1 (the rest goes to the latents).
        Recomputed plainly from the layer's own weights and inputs, for plots rather than speed.
        """
        layer, seen = self.layers[-1], {}
        hook = layer.register_forward_pre_hook(lambda module, args: seen.update(x=args[0], latents=args[1],
                                                                                 mask=args[2]))
        fused, self.fused = self.fused, False  # the plain path hands each layer the media tokens as they are
        try:
            self(x, frame_mask)
        finally:
            hook.remove()
            self.fused = fused
        media = layer.norm_media(seen["x"])  # [B', N, D]
        lat_n = layer.norm_latents(seen["latents"])
        q = layer.attn.queries(lat_n)
        k, _ = layer.attn.keys_values(torch.cat((media, lat_n), dim=-2))
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B', H, R, N+R]
        if seen["mask"] is not None:
            scores = scores.masked_fill(~seen["mask"], float("-inf"))
        n = media.shape[1]
        return scores.softmax(-1).mean(1)[..., :n].reshape(*x.shape[:2], self.num_latents, n)


# ----------------------------------------------------------------------------- the fused path's machinery


def _scratch(scratch: dict, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A buffer kept in `scratch` across the layers of one forward pass, made on first use, with
    `like`'s dtype and device.

    Fresh multi-MB tensors in every layer are page-faulted in anew each time (glibc returns
    large freed blocks to the OS), which costs several percent of a forward pass."""
    buf = scratch.get(name)
    if buf is None or buf.shape != torch.Size(shape) or buf.dtype != like.dtype or buf.device != like.device:
        buf = scratch[name] = like.new_empty(shape)
    return buf


def _linear(x: torch.Tensor, lin: nn.Linear, cast: dict | None) -> torch.Tensor:
    """lin(x). `cast` (inference under autocast only): the low-precision copy of the weight that
    autocast would make afresh in every call goes into a buffer shared by all layers instead.
    At R = 64 latent rows these matmuls are bound by their weights, and a fresh 8 MiB copy per
    call, page-faulted in each time, costs as much as the bf16 matmul saves."""
    if cast is None:
        return lin(x)
    like = cast["like"]  # a tensor of the autocast dtype, on the device
    w = _scratch(cast, f"w{tuple(lin.weight.shape)}", lin.weight.shape, like).copy_(lin.weight)
    b = None if lin.bias is None else lin.bias.to(like.dtype)
    with torch.autocast(like.device.type, enabled=False):  # the same maths as autocast's linear
        return F.linear(x.to(like.dtype), w, b)


def _ff(ff: nn.Sequential, x: torch.Tensor, cast: dict | None) -> torch.Tensor:
    for m in ff:
        x = _linear(x, m, cast) if isinstance(m, nn.Linear) else m(x)
    return x


def _project_kv(x_t: torch.Tensor, lat_t: torch.Tensor, w: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                k: torch.Tensor, v: torch.Tensor, scratch: dict) -> None:
    """Fill k, v [T, B', I] (media rows, then latent rows) with [norm_media(x) ; lat] @ W_kv^T.

    x_t [N, B', D]: media tokens normalised without affine, token-major; lat_t [R, B', D];
    w = to_kv.weight [2I, D]; gamma, beta [D]: norm_media's affine. Runs in x_t's dtype
    (autocast must be off). `scratch` holds the folded weights' buffers between layers.
    """
    dt = x_t.dtype
    N, inner = x_t.shape[0], w.shape[0] // 2
    w_c = w if w.dtype == dt else _scratch(scratch, "w_c", w.shape, x_t).copy_(w)  # the latents' weight
    # The folded affine: W * gamma, and the shift W beta, which the matmul adds itself (addmm).
    # Under bf16 both come from the bf16 weight, just cast and still in cache: one pass over the
    # fp32 weight instead of three (a mixed fp32 -> bf16 multiply is slow besides).
    w_fold = torch.mul(w_c, gamma.to(dt), out=_scratch(scratch, "w_fold", w.shape, x_t))
    bias = w_c @ beta.to(dt)
    x2, lat2 = x_t.flatten(0, 1), lat_t.flatten(0, 1)  # [N*B', D], [R*B', D]
    for rows, out in ((slice(0, inner), k), (slice(inner, 2 * inner), v)):
        torch.addmm(bias[rows], x2, w_fold[rows].t(), out=out[:N].flatten(0, 1))
        torch.mm(lat2, w_c[rows].t(), out=out[N:].flatten(0, 1))


class _MediaLatentKV(torch.autograd.Function):
    """k, v [T, B', I] = [norm_media(x) ; lat_n] @ W_kv^T, norm_media's affine folded into W_kv.

    Inputs: x_t [N, B', D] media tokens normalised without affine, token-major, already in
    the compute dtype; lat_n [B', R, D] normalised latents; w = to_kv.weight [2I, D];
    gamma, beta [D]. Dtypes are explicit (autocast off inside): the compute dtype is x_t's.
    """

    @staticmethod
    def forward(ctx, x_t, lat_n, w, gamma, beta, scratch):
        with torch.autocast(x_t.device.type, enabled=False):
            lat_t = lat_n.transpose(0, 1).to(x_t.dtype).contiguous()  # [R, B', D]
            shape = (x_t.shape[0] + lat_t.shape[0], x_t.shape[1], w.shape[0] // 2)
            k, v = x_t.new_empty(shape), x_t.new_empty(shape)  # kept for the backward pass: fresh
            _project_kv(x_t, lat_t, w, gamma, beta, k, v, scratch)
        ctx.save_for_backward(x_t, lat_t, w, gamma, beta)
        ctx.lat_dtype = lat_n.dtype
        return k, v

    @staticmethod
    def backward(ctx, grad_k, grad_v):
        x_t, lat_t, w, gamma, beta = ctx.saved_tensors
        need_x, need_lat = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dt, N, inner = x_t.dtype, x_t.shape[0], w.shape[0] // 2
        acc = torch.promote_types(w.dtype, torch.float32)  # parameter gradients: at least fp32
        x2, lat2 = x_t.flatten(0, 1), lat_t.flatten(0, 1)  # [N*B', D], [R*B', D]
        with torch.autocast(x_t.device.type, enabled=False):
            grad_w = torch.zeros_like(w, dtype=acc)
            grad_gamma = torch.zeros_like(gamma, dtype=acc)
            grad_beta = torch.zeros_like(beta, dtype=acc)
            grad_x = grad_lat = None
            w_c = w.to(dt)
            for rows, g in ((slice(0, inner), grad_k), (slice(inner, 2 * inner), grad_v)):
                if g is None:
                    continue
                g = g.to(dt).contiguous()
                g_media, g_lat = g[:N].flatten(0, 1), g[N:].flatten(0, 1)  # [N*B', I], [R*B', I]
                # gradient of the folded weight W * gamma: the one big matmul of this backward
                a = (g_media.t() @ x2).to(acc)  # [I, D]
                s = g_media.sum(0, dtype=acc)  # gradient of the folded shift W beta
                w_rows = w[rows].to(acc)
                # chain rule through W * gamma and W beta, plus the latents' own rows
                grad_w[rows] = a * gamma.to(acc) + torch.outer(s, beta.to(acc)) + (g_lat.t() @ lat2).to(acc)
                grad_gamma += (a * w_rows).sum(0)
                grad_beta += s @ w_rows
                if need_lat:
                    gl = g_lat @ w_c[rows]
                    grad_lat = gl if grad_lat is None else grad_lat + gl
                if need_x:  # only when the media tokens themselves need a gradient
                    gx = g_media @ (w_c[rows] * gamma.to(dt))
                    grad_x = gx if grad_x is None else grad_x + gx
            if grad_lat is not None:  # [R*B', D] -> [B', R, D]
                grad_lat = grad_lat.view(lat_t.shape).transpose(0, 1).to(ctx.lat_dtype)
            if grad_x is not None:
                grad_x = grad_x.view(x_t.shape)
        return grad_x, grad_lat, grad_w.to(w.dtype), grad_gamma.to(gamma.dtype), grad_beta.to(beta.dtype), None


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Token-major [T, B', H*Dh] -> a [B', H, T, Dh] view (SDPA takes any strides)."""
    return t.unflatten(-1, (heads, -1)).permute(1, 2, 0, 3)
