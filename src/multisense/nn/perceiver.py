"""Perceiver latent fusion (Jaegle et al. 2021, "Perceiver"; the decoder: Jaegle et al. 2022,
"Perceiver IO").

A learned latent array cross-attends to the tokens of every modality at once, then refines
itself with latent self-attention. The cross-attention costs O(R N) for N input tokens; each
self-attention layer O(R^2), independent of N. Each modality (a camera, a tactile sensor, a
force-torque stream, audio) keeps its own width: it is projected to the latent width by its
own linear layer (its position features concatenated first) and tagged with a learned
modality embedding. Modalities are named; inputs are matched by name, never by position.

    tokens_m = W_m [x_m ; pos_m] + e_m                  # per modality m, [B, N_m, D]
    lat = latents;  for each block b of the schedule:
        lat = lat + CrossAttn(LN(lat), LN([tokens_1 ; ... ; tokens_M]), key mask)   # (if b cross-attends)
        lat = lat + FF(lat)
        for each latent layer: lat = lat + SelfAttn(LN(lat)); lat = lat + FF(lat)
    out = LN(lat)

A latent whose keys are all masked (every token of every modality dropped) gets exactly zero
from the cross-attention, not a uniform average; a masked token's values, NaN or inf included,
change nothing. With `chunk_size`, the cross-attention reads the inputs `chunk_size` tokens at
a time with an online softmax (`attend_chunks`), so without autograd no [N, D] projection of all
tokens is ever held: 115,200 tokens fit in little memory.

With `balance_modalities`, each key of modality m gets the score bias -log(n_m), n_m the
sample's real tokens of m: at equal scores every present modality then gets the same share of
attention, not a share in proportion to its token count (a camera's 1,440 tokens would
otherwise start with 700 times the mass of touch's 2, and a modality that starts unattended
gets almost no gradient). The scores learn on top of that prior.

Shape letters: B batch, N_m tokens of modality m, C_m its input width, P its coordinates per
token, N total tokens, R latents, D latent width, Q output queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import Attention, attend, attend_chunks, merge_heads
from .checks import check_shape
from .feedforward import FeedForward
from .posemb import FourierFeatures


@dataclass(frozen=True)
class Modality:
    """One input stream of a Perceiver.

    dim: width C of its tokens. position: "fourier" (real coordinates or timestamps given per
    sample, `pos_dims` per token, in [-1, 1]), "learned" (a table over token index, `max_tokens`
    long) or None. optional: may be absent from a batch (then it is simply not attended to).
    """

    dim: int
    position: str | None = None
    pos_dims: int = 1
    num_bands: int = 8
    max_freq: float = 32.0
    max_tokens: int | None = None
    optional: bool = True

    def __post_init__(self):
        if self.position not in (None, "fourier", "learned"):
            raise ValueError(f"position: expected 'fourier', 'learned' or None, got {self.position!r}")
        if self.position == "learned" and not self.max_tokens:
            raise ValueError("max_tokens: a learned position table needs its length (max_tokens=...)")


class ModalityInput(nn.Module):
    """x [B, N, C] (+ positions [B, N, P]) -> tokens [B, N, D] at the latent width, tagged."""

    def __init__(self, spec: Modality, dim: int):
        super().__init__()
        self.spec = spec
        self.fourier = FourierFeatures(pos_dims=spec.pos_dims, num_bands=spec.num_bands,
                                       max_freq=spec.max_freq) if spec.position == "fourier" else None
        self.proj = nn.Linear(spec.dim + (self.fourier.dim if self.fourier else 0), dim)
        self.embedding = nn.Parameter(torch.randn(dim) * 0.02)  # which modality a token came from
        self.table = nn.Parameter(torch.randn(spec.max_tokens, dim) * 0.02) if spec.position == "learned" else None

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        """Tokens `start` .. `start + N` of the stream (`x` and `positions` are that slice)."""
        if self.fourier is not None:
            x = torch.cat((x, self.fourier(positions.to(x.dtype))), dim=-1)
        tokens = self.proj(x) + self.embedding
        if self.table is not None:
            tokens = tokens + self.table[start:start + x.shape[-2]]
        return tokens


class CrossAttentionBlock(nn.Module):
    """latents [B, R, D] <- inputs [B, N, D]: pre-norm cross-attention, then a feed-forward."""

    def __init__(self, dim: int, *, heads: int, dim_head: int, ff_mult: int, qk_norm: bool = False):
        super().__init__()
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_inputs = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=heads, dim_head=dim_head, qk_norm=qk_norm)
        self.ff = FeedForward(dim, mult=ff_mult)

    def forward(self, latents: torch.Tensor, chunks, *, stream: bool, groups: int = 0):
        """`chunks` yields (tokens [B, Nc, D], key mask [B, Nc] or None, group). Not `stream`
        and no attention mass asked for (`groups` 0): all chunks at once through SDPA; else
        chunk by chunk with an online softmax. Returns the latents and the mass per group."""
        q = self.attn.queries(self.norm_latents(latents))  # [B, H, R, Dh]
        if not stream and not groups:
            parts = list(chunks)
            tokens = torch.cat([t for t, _, _ in parts], dim=1)  # [B, N, D]
            mask = None
            if any(m is not None for _, m, _ in parts):  # bool, or float biases where any chunk has one
                fill = 0.0 if any(m is not None and m.dtype != torch.bool for _, m, _ in parts) else True
                mask = torch.cat([torch.full(t.shape[:2], fill, device=t.device) if m is None else m
                                  for t, m, _ in parts], dim=1)[:, None, None, :]
            k, v = self.attn.keys_values(self.norm_inputs(tokens))
            out, mass = attend(q, k, v, mask), None
        else:
            out, mass = attend_chunks(q, self._keys(chunks), groups=groups)
        latents = latents + self.attn.to_out(merge_heads(out))
        return latents + self.ff(latents), mass

    def _keys(self, chunks):
        """attend_chunks' (k, v, mask, group) of each chunk of `forward`'s."""
        for tokens, m, group in chunks:
            k, v = self.attn.keys_values(self.norm_inputs(tokens))
            yield k, v, None if m is None else m[:, None, None, :], group

    def attention_weights(self, latents: torch.Tensor, chunks) -> list[tuple[torch.Tensor, int]]:
        """The cross-attention's weights, one softmax over every chunk's keys: (weights
        [B, H, R, Nc], group) per chunk of `forward`'s."""
        q = self.attn.queries(self.norm_latents(latents))
        groups = []

        def keys():
            for k, v, m, group in self._keys(chunks):
                groups.append(group)
                yield k, v, m, group

        _, _, weights = attend_chunks(q, keys(), weights=True)
        return list(zip(weights, groups))


class TransformerLayer(nn.Module):
    """Pre-norm self-attention, then a feed-forward, [B, N, D] -> [B, N, D]: the Perceiver's latent
    layer, and the layer of the sensor encoders' small transformers."""

    def __init__(self, dim: int, *, heads: int, dim_head: int, ff_mult: int, qk_norm: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=heads, dim_head=dim_head, qk_norm=qk_norm)
        self.ff = FeedForward(dim, mult=ff_mult)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D]; mask [B, N] (True = a real token) hides padding from every query."""
        x = x + self.attn(self.norm(x), mask=None if mask is None else mask[:, None, None, :])
        return x + self.ff(x)


class Perceiver(nn.Module):
    """A latent array [R, D] over named modalities; forward(inputs) -> latents [B, R, D].

    Args:
        dim: latent width D. num_latents: R.
        modalities: name -> `Modality` (or an int, its token width with no positions).
        depth: latent self-attention layers per block. num_blocks: blocks in the schedule.
        repeat_cross_attend: every block starts with a cross-attend (else only the first).
        share_weights: the Perceiver's schedule: blocks after the first share one cross-attention,
            and every block shares one latent tower. False: each block has its own weights.
        cross_heads, cross_dim_head / heads, dim_head: the cross- and the latent attention.
        chunk_size: cross-attend to this many tokens at a time (None: all at once).
        balance_modalities: the score bias -log(n_m) on modality m's keys (module docstring).
    `schedule` lists, per block, (index into `cross` or None, index into `towers`).
    """

    def __init__(self, *, dim: int, num_latents: int, modalities: dict[str, Modality | int], depth: int = 2,
                 num_blocks: int = 1, repeat_cross_attend: bool = False, share_weights: bool = True,
                 cross_heads: int = 1, cross_dim_head: int = 64, heads: int = 8, dim_head: int = 64,
                 ff_mult: int = 4, qk_norm: bool = False, chunk_size: int | None = None,
                 balance_modalities: bool = False):
        super().__init__()
        if not modalities:
            raise ValueError("modalities: expected at least one named modality, got none")
        if num_blocks < 1 or depth < 0:
            raise ValueError(f"num_blocks must be >= 1 and depth >= 0, got {num_blocks}, {depth}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive number of tokens or None, got {chunk_size}")
        specs = {name: m if isinstance(m, Modality) else Modality(dim=int(m)) for name, m in modalities.items()}
        self.names = sorted(specs)  # a canonical order: the same sums whatever order a dict was built in
        self.inputs = nn.ModuleDict({name: ModalityInput(spec, dim) for name, spec in specs.items()})
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.chunk_size = chunk_size
        self.balance_modalities = balance_modalities

        crosses = [b == 0 or repeat_cross_attend for b in range(num_blocks)]
        n_cross = (min(sum(crosses), 2) if share_weights else sum(crosses))
        n_towers = 1 if share_weights else num_blocks
        self.cross = nn.ModuleList(CrossAttentionBlock(dim, heads=cross_heads, dim_head=cross_dim_head,
                                                       ff_mult=ff_mult, qk_norm=qk_norm) for _ in range(n_cross))
        self.towers = nn.ModuleList(
            nn.ModuleList(TransformerLayer(dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult, qk_norm=qk_norm)
                          for _ in range(depth)) for _ in range(n_towers))
        self.schedule: list[tuple[int | None, int]] = []
        used = 0
        for b, cross in enumerate(crosses):
            index = None
            if cross:
                index = min(used, n_cross - 1)
                used += 1
            self.schedule.append((index, 0 if share_weights else b))
        self.norm = nn.LayerNorm(dim)

    @property
    def dim(self) -> int:
        return self.latents.shape[-1]

    def check_inputs(self, inputs: dict, mask: dict | None, positions: dict | None) -> int:
        """Names and shapes, before any work; returns the batch size."""
        for kind, given in (("inputs", inputs), ("mask", mask or {}), ("positions", positions or {})):
            unknown = [n for n in given if n not in self.inputs]
            if unknown:
                raise ValueError(f"{kind}: no modality named {unknown[0]!r}; this Perceiver was built for "
                                 f"{self.names}")
        missing = [n for n in self.names if n not in inputs and not self.inputs[n].spec.optional]
        if missing:
            raise ValueError(f"inputs: modality {missing[0]!r} is missing and was not built optional")
        if not inputs:
            raise ValueError(f"inputs: expected at least one of the modalities {self.names}, got none")
        batch = None
        for name, x in inputs.items():
            spec = self.inputs[name].spec
            size = check_shape(f"inputs[{name!r}]", x, "B N C", C=spec.dim, **({"B": batch} if batch else {}))
            batch = size["B"]
            if mask and name in mask:
                check_shape(f"mask[{name!r}]", mask[name], "B N", B=batch, N=size["N"])
                if mask[name].dtype != torch.bool:  # a float mask read as bool would keep exactly the dropped tokens
                    raise ValueError(f"mask[{name!r}]: expected a bool mask (True = a real token), got "
                                     f"{mask[name].dtype}")
            if spec.position == "fourier":
                if not positions or name not in positions:
                    raise ValueError(f"positions: modality {name!r} uses Fourier positions; give "
                                     f"positions[{name!r}] of shape [B, N, {spec.pos_dims}]")
                check_shape(f"positions[{name!r}]", positions[name], "B N P", B=batch, N=size["N"], P=spec.pos_dims)
            if spec.position == "learned" and size["N"] > spec.max_tokens:
                raise ValueError(f"inputs[{name!r}]: {size['N']} tokens, but its learned position table holds "
                                 f"{spec.max_tokens}")
        return batch

    def _chunks(self, inputs, mask, positions):
        """(tokens [B, Nc, D], mask [B, Nc] or None, modality index) over every modality in turn;
        with balance_modalities the mask is the float score bias (-inf where masked). Masked
        tokens enter as zeros: a zero weight times a NaN or inf value is still NaN."""
        for g, name in enumerate(self.names):
            if name not in inputs:
                continue
            x = inputs[name]
            full = mask[name] if mask and name in mask else None
            bias = None
            if self.balance_modalities:  # -log(real tokens of this modality), per sample: [B, 1]
                real = full.sum(1) if full is not None else torch.full(x.shape[:1], x.shape[1], device=x.device)
                bias = -real.clamp(min=1).to(x.dtype).log()[:, None]
            step = self.chunk_size or x.shape[1]
            for start in range(0, x.shape[1], step):
                part = slice(start, start + step)
                xs = x[:, part]
                pos = positions[name][:, part] if positions and name in positions else None
                m = full[:, part] if full is not None else None
                if m is not None:
                    xs = xs.masked_fill(~m[..., None], 0.0)
                    pos = None if pos is None else pos.masked_fill(~m[..., None], 0.0)
                if bias is not None:
                    m = bias.expand(-1, xs.shape[1]) if m is None else bias.masked_fill(~m, float("-inf"))
                yield self.inputs[name](xs, pos, start), m, g

    def attention_weights(self, inputs: dict[str, torch.Tensor], *, mask: dict[str, torch.Tensor] | None = None,
                          positions: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The first cross-attention's weights on every token, name -> [B, H, R, N_m]: one softmax
        over the tokens of every modality given (with balance_modalities' bias), as `forward`
        computes it; 0 at masked tokens. Summed over a modality's tokens and averaged over heads
        they are `forward`'s `return_attention` shares. Arguments as `forward`'s."""
        B = self.check_inputs(inputs, mask, positions)
        cross = self.cross[self.schedule[0][0]]  # the first block always cross-attends
        kept = cross.attention_weights(self.latents.expand(B, -1, -1), self._chunks(inputs, mask, positions))
        return {name: torch.cat([w for w, group in kept if group == g], dim=-1)
                for g, name in enumerate(self.names) if name in inputs}

    def forward(self, inputs: dict[str, torch.Tensor], *, mask: dict[str, torch.Tensor] | None = None,
                positions: dict[str, torch.Tensor] | None = None, return_attention: bool = False):
        """inputs: name -> [B, N_m, C_m]; mask: name -> [B, N_m] bool (True = a real token);
        positions: name -> [B, N_m, P] for Fourier modalities. -> latents [B, R, D], and with
        `return_attention` the share of the first cross-attention's mass on each modality:
        name -> [B, R] (mean over heads; 0 for a latent that saw nothing)."""
        B = self.check_inputs(inputs, mask, positions)
        latents = self.latents.expand(B, -1, -1)
        stream = self.chunk_size is not None
        # all at once: each modality is projected once for every cross-attend; streamed: again each
        # time, so that no projection of all tokens is ever held
        parts = None if stream else list(self._chunks(inputs, mask, positions))
        shares = None
        for cross, tower in self.schedule:
            if cross is not None:
                want = return_attention and shares is None
                chunks = self._chunks(inputs, mask, positions) if stream else iter(parts)
                latents, mass = self.cross[cross](latents, chunks, stream=stream,
                                                  groups=len(self.names) if want else 0)
                if want:
                    shares = {n: mass[g].mean(1) for g, n in enumerate(self.names) if n in inputs}
            for layer in self.towers[tower]:
                latents = layer(latents)
        latents = self.norm(latents)
        return (latents, shares) if return_attention else latents


class PerceiverDecoder(nn.Module):
    """Perceiver IO's decoder: output queries [B, Q, Dq] cross-attend to the latents [B, R, D],
    then a feed-forward and a linear map to `out_dim` (a class, a regression target, or the
    width a language model reads). Queries are learned (`num_queries` of them) unless given."""

    def __init__(self, dim: int, *, out_dim: int, num_queries: int = 1, dim_query: int | None = None,
                 heads: int = 1, dim_head: int = 64, ff_mult: int = 4):
        super().__init__()
        dim_query = dim_query or dim
        self.queries = nn.Parameter(torch.randn(num_queries, dim_query) * 0.02)
        self.norm_queries = nn.LayerNorm(dim_query)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = Attention(dim_query, dim_context=dim, heads=heads, dim_head=dim_head)
        self.ff = FeedForward(dim_query, mult=ff_mult)
        self.out = nn.Linear(dim_query, out_dim)

    def forward(self, latents: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """latents [B, R, D], queries [B, Q, Dq] or None (the learned ones) -> [B, Q, out_dim]"""
        q = self.queries.expand(latents.shape[0], -1, -1) if queries is None else queries
        q = q + self.attn(self.norm_queries(q), self.norm_latents(latents))
        return self.out(q + self.ff(q))
