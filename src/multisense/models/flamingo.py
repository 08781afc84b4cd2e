"""Flamingo (Alayrac et al. 2022) over any Hugging Face causal language model.

A frozen vision encoder turns each frame into tokens, a Perceiver Resampler compresses every
media item (an image, or a clip of F frames) to R latents, and tanh-gated cross-attention
blocks, initialised closed, run before every n-th layer of the frozen LM. At step 0 the
model computes the frozen LM's logits bit for bit, and it learns to look.

The gated blocks are attached with forward pre-hooks (`multisense.lm.inject`), so the LM
keeps its module tree, weight names, KV cache and `generate`. Media travel as arguments:
for the length of one `forward` or `generate` call they sit in a `_Call`, never on the
layers. Before every LM forward in that call (one per decoding step in `generate`),
`_before_lm` runs these steps, each a method below:
  1. `_check_cache`: the call's own FlamingoCache reached the LM (found by identity, so
     transformers may pass it under any keyword);
  2. `_join_media` (first step only): the media are matched to the LM's rows (generate
     repeats rows for beams and num_return_sequences) and appended to the cache's media,
     each sample's new items right after its own real ones;
  3. the media index of every token, continuing the marker count the cache holds;
  4. `check_media_counts`: markers and media agree per sample;
  5. the routing of tokens to media latents, shared by every gated layer;
  6. `_embed_markers`: the marker tokens get the trainable marker embedding (and the added
     words, `added_token_ids`, theirs).

Media may also arrive already resampled (`media_latents`, e.g. the latents of a Perceiver fusing
other sensors): they go straight to the gated blocks' keys and values. A model built with
`resampler_depth=0` has no resampler and takes only those.

Shape letters: B batch, L text length, M media items, F frames, C/H/W pixels, S tokens per
frame, Dv vision width, R latents, D LM width, H heads, Dh head width.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import Cache, DynamicCache

from ..config import FamilyConfig, check_choice, check_number
from ..encoders import MediaStandardization, as_encoder, check_frame_mask, encode_frames, media_tokens
from ..lm.adapters import cache_argument, find_decoder_layers
from ..lm.inject import cross_attn_layer_ids, hook_before_layers
from ..nn import GatedCrossAttentionBlock, MediaRouting, PerceiverResampler, check_media_counts, media_index
from ..nn.checks import check_shape
from ..nn.gated_xattn import GATES
from ..nn.masks import parse_mode
from ..tokens import IGNORE_INDEX
from .conventions import ModelConventions, check_text_inputs, generation_options
from .io import attach_identities, load_backbones, load_into, read_checkpoint, save_checkpoint, saved_tokenizer


@dataclass
class FlamingoConfig(FamilyConfig):
    """Everything that shapes a FlamingoModel apart from its two frozen backbones."""

    media_token_id: int | None = None
    cross_attn_every: int = 1
    num_latents: int = 64
    resampler_depth: int = 6  # 0: no resampler; media come already resampled, as media_latents
    resampler_heads: int = 8
    resampler_dim_head: int = 64
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    ff_mult: int = 4
    max_frames: int | None = None
    interpolate_frames: bool = False
    mode: str = "immediate"
    gate: str = "scalar"
    ff_on_media_tokens_only: bool = False
    qk_norm: bool = False
    # Standardise each channel of the frozen encoder's features with statistics measured once on
    # training media (`calibrate_media`). Encoder features often share a large offset across
    # images that per-token LayerNorm keeps; removing it lets a fresh resampler tell images apart
    # from the first steps; without it digits stayed at chance (measured: docs/history.md).
    standardize_media: bool = False
    decoder_layers_attr: str | None = None
    dim_media: int | None = None
    # Tokens added to the tokenizer beyond the LM's vocabulary (not the marker): words of a new
    # task the LM cannot spell. Like a new marker, each reads a trainable input embedding; the
    # frozen head has no logit for them, so they never carry loss.
    added_token_ids: list[int] = field(default_factory=list)
    lm: dict = field(default_factory=dict)  # identity of the frozen LM (filled by from_lm)
    vision: dict = field(default_factory=dict)  # identity of the frozen vision encoder

    def validate(self, where: str = "") -> None:
        try:
            parse_mode(self.mode)  # the masking's own rule; its error names `mode`
        except ValueError as err:
            raise ValueError(f"{where}{err}") from None
        self.check_positive(where, "cross_attn_every", "num_latents", "resampler_heads", "resampler_dim_head",
                            "xattn_heads", "xattn_dim_head", "ff_mult")
        check_number(self.resampler_depth, f"{where}resampler_depth", at_least=0)
        if self.max_frames is not None:
            self.check_positive(where, "max_frames")
        check_choice(self.gate, GATES, f"{where}gate")


class FlamingoCache(DynamicCache):
    """The LM's KV cache plus what a later call needs to go on with media.

    media_kv: per gated layer, the K/V of every media item seen so far, 2 x [B, M, H, R, Dh];
    media_present: [B, M] which of those items are real (each sample's real items first);
    marker_counts: [B] media markers among the cached tokens, counted when the cache held
    `counted_tokens` tokens. A cache whose length differs from that was changed outside
    FlamingoModel (cropped, or filled by a plain LM call), and is refused rather than read with
    a wrong marker count.

    Beam search reorders the LM's rows within each sample's beams; the media and marker
    counts of those rows are the same, so they need no reordering.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.media_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.media_present: torch.Tensor | None = None
        self.marker_counts: torch.Tensor | None = None
        self.counted_tokens = 0

    def cached_markers(self) -> tuple[torch.Tensor | None, int]:
        """(media markers among the cached tokens [B], or None for an empty cache; cached tokens)."""
        past = self.get_seq_length()
        if past == 0:
            return None, 0
        if self.marker_counts is None or self.counted_tokens != past:
            raise ValueError(f"past_key_values: the cache holds {past} tokens, but FlamingoModel counted media "
                             f"markers over {self.counted_tokens}; it was changed outside FlamingoModel (cropped, "
                             "or filled by the language model alone), so its media markers are unknown")
        return self.marker_counts, past


@dataclass
class _Call:
    """One call of forward or generate, as the LM's hooks see it."""

    media_kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per gated layer, 2 x [B, M, H, R, Dh]
    present: torch.Tensor | None  # [B, M] bool
    cache: FlamingoCache | None
    generating: bool  # generate may repeat the rows (beams, num_return_sequences)
    joined: bool = False  # media matched to the LM's rows and to the cache's media
    routing: MediaRouting | None = None


def _append_media(old_kv, old_present, new_kv, new_present):
    """The cache's media followed by new ones, per sample: each sample's real items first, in
    order, then padding. Media index m of a sample is its m-th real item, so new items must
    come right after that sample's own real ones, not after the batch's padding slots."""
    if old_kv is None or new_kv is None:
        return (new_kv, new_present) if old_kv is None else (old_kv, old_present)
    present = torch.cat((old_present, new_present), dim=1)  # [B, M1 + M2]
    order = torch.argsort((~present).to(torch.uint8), dim=1, stable=True)  # real ones first, in order
    rows = torch.arange(present.shape[0], device=present.device).unsqueeze(-1)
    kv = [(torch.cat((ko, kn), 1)[rows, order], torch.cat((vo, vn), 1)[rows, order])
          for (ko, vo), (kn, vn) in zip(old_kv, new_kv)]
    return kv, present[rows, order]


def _pop_cache(kwargs: dict):
    """The cache a caller passed, under either name transformers has used for it."""
    given = {k: kwargs.pop(k) for k in ("past_key_values", "cache") if kwargs.get(k) is not None}
    if len(given) > 1:
        raise ValueError("pass the cache as past_key_values or as cache, not both")
    cache = next(iter(given.values()), None)
    if cache is not None and not isinstance(cache, FlamingoCache):
        raise ValueError(f"past_key_values: expected a multisense.FlamingoCache (it keeps the media's K/V and "
                         f"marker count beside the LM's cache), got {type(cache).__name__}")
    return cache


class FlamingoModel(ModelConventions, MediaStandardization, nn.Module):
    """A frozen HF causal LM and vision encoder, joined by a trainable resampler and gated blocks."""

    shift_labels = True  # a causal LM: the logits at t predict the label at t + 1
    reads_labels = False  # the loss is the loop's, from the logits (models.scoring)
    distills_in_words = True  # train.distill_words: its hidden states at a marker can be compared with a word's

    @staticmethod
    def align_labels(out, labels: torch.Tensor) -> torch.Tensor:
        """The batch's labels laid out like the logits: the same layout, token for token."""
        return labels

    def context_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B] tokens each sample occupies in the LM's context: its text, one marker per media
        item (the media reach the LM by cross-attention, not in its sequence)."""
        return attention_mask.sum(-1) if attention_mask is not None else torch.full_like(input_ids[:, 0], input_ids.shape[1])

    def __init__(self, lm: nn.Module, vision_encoder: nn.Module | None, config: FlamingoConfig):
        super().__init__()
        if config.media_token_id is None:
            raise ValueError("media_token_id: required (or pass tokenizer= to from_lm to add an <image> token)")
        self.config = config
        self.lm = lm
        self.tokenizer = None  # set by from_lm / from_pretrained when there is one; saved beside the weights
        self.vision_encoder = as_encoder(vision_encoder, config.dim_media) if vision_encoder is not None else None
        dim_media = config.dim_media or (self.vision_encoder.dim if self.vision_encoder is not None else None)
        if dim_media is None:
            raise ValueError("dim_media: required when no vision_encoder is given (the width of media_features)")
        config.dim_media = dim_media
        for p in self.lm.parameters():
            p.requires_grad_(False)
        if self.vision_encoder is not None:
            for p in self.vision_encoder.parameters():
                p.requires_grad_(False)
        if config.resampler_depth < 0:
            raise ValueError(f"resampler_depth: expected 0 (no resampler: media_latents only) or more, "
                             f"got {config.resampler_depth}")
        if config.resampler_depth == 0 and (self.vision_encoder is not None or config.standardize_media):
            raise ValueError("resampler_depth=0: no resampler, so media come as media_latents; "
                             + ("a vision_encoder would go unused" if self.vision_encoder is not None
                                else "standardize_media has no encoder features to standardise"))
        self._cache_argument = cache_argument(lm)

        # The new parts are built in float32 whatever the backbones' dtype (they train, and
        # their inputs and outputs are cast at the boundaries); `model.to(dtype)` casts them too.
        self._init_standardization(dim_media)  # identity until calibrate_media
        self.resampler = PerceiverResampler(
            dim=dim_media, depth=config.resampler_depth, num_latents=config.num_latents,
            heads=config.resampler_heads, dim_head=config.resampler_dim_head, ff_mult=config.ff_mult,
            max_frames=config.max_frames, interpolate_frames=config.interpolate_frames,
        ) if config.resampler_depth else None  # none: no untrained weights that nothing reads
        embeddings = lm.get_input_embeddings()
        dim = embeddings.embedding_dim
        _, layers = find_decoder_layers(lm, config.decoder_layers_attr)
        self.layer_ids = cross_attn_layer_ids(len(layers), config.cross_attn_every)
        self.gated_layers = nn.ModuleList(
            GatedCrossAttentionBlock(dim=dim, dim_media=dim_media, heads=config.xattn_heads,
                                     dim_head=config.xattn_dim_head, ff_mult=config.ff_mult, gate=config.gate,
                                     ff_on_media_tokens_only=config.ff_on_media_tokens_only,
                                     qk_norm=config.qk_norm, mode=config.mode)
            for _ in self.layer_ids)
        # The marker's embedding is ours and trainable; the LM's embedding matrix stays frozen.
        self.marker_embedding = nn.Parameter(_marker_init(embeddings, config.media_token_id))
        vocab = embeddings.num_embeddings
        wrong = [i for i in config.added_token_ids if i < vocab or i == config.media_token_id]
        if wrong or len(set(config.added_token_ids)) != len(config.added_token_ids):
            raise ValueError(f"added_token_ids: expected distinct ids beyond the LM's vocabulary ({vocab}) other "
                             f"than the marker ({config.media_token_id}), got {config.added_token_ids}")
        if config.added_token_ids:  # each starts as a new marker does: the mean embedding of the vocabulary
            mean = _marker_init(embeddings, vocab)
            self.added_embeddings = nn.Parameter(mean.expand(len(config.added_token_ids), -1).clone())
        self._call: _Call | None = None
        self._hooks = [lm.register_forward_pre_hook(self._before_lm, with_kwargs=True)]
        self._hooks += hook_before_layers(layers, self.layer_ids, self._run_gated_layer)
        self.lm.eval()
        if self.vision_encoder is not None:
            self.vision_encoder.eval()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_lm(cls, lm: nn.Module, vision_encoder: nn.Module | None = None, *, tokenizer=None,
                media_token_id: int | None = None, config: FlamingoConfig | None = None,
                **overrides) -> "FlamingoModel":
        """Wrap any HF causal LM. Keywords are FlamingoConfig fields (cross_attn_every=4, num_latents=64, ...).

        With a `tokenizer` and no `media_token_id`, an `<image>` special token is added to it;
        the tokenizer is kept and saved by `save_pretrained`.
        """
        config = (config or FlamingoConfig()).replace(**overrides)
        vision_encoder = attach_identities(config, lm, vision_encoder, tokenizer=tokenizer,
                                           media_token_id=media_token_id)
        model = cls(lm, vision_encoder, config)
        model.tokenizer = tokenizer
        return model

    # ------------------------------------------------------------------ media

    def encode_media(self, pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                     frame_mask: torch.Tensor | None = None):
        """Encode and resample media -> (latents [B, M, R, Dv], present [B, M]), or (None, None)."""
        if pixel_values is None and media_features is None:
            return None, None
        if self.resampler is None:
            raise ValueError("pixel_values/media_features: this FlamingoModel has no resampler (resampler_depth=0); "
                             "pass already-resampled media as media_latents [B, M, R, D_media]")
        frame_mask = check_frame_mask(pixel_values if pixel_values is not None else media_features, frame_mask)
        feats = self.media_tokens(pixel_values, media_features, frame_mask)
        feats = feats.to(self.resampler.latents.dtype)
        B, M = feats.shape[:2]
        feats = self.standardize(feats)
        if frame_mask is not None:
            present = _real_first(frame_mask.any(-1), "frame_mask")
        else:
            present = torch.ones(B, M, dtype=torch.bool, device=feats.device)
        return self.resampler(feats, frame_mask), present

    def media_inputs(self, pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                     frame_mask: torch.Tensor | None = None, media_latents: torch.Tensor | None = None,
                     media_mask: torch.Tensor | None = None):
        """(latents [B, M, R, Dm], present [B, M]) of whichever media were given, or (None, None):
        pixels or encoder features through `encode_media`, or `media_latents` as they are, with
        `media_mask` [B, M] (True: a real item; each sample's real items first)."""
        if media_latents is None:
            if media_mask is not None:
                raise ValueError("media_mask: marks the items of media_latents, which were not given")
            return self.encode_media(pixel_values, media_features, frame_mask)
        if pixel_values is not None or media_features is not None or frame_mask is not None:
            raise ValueError("media_latents: given with pixel_values/media_features/frame_mask; pass one kind of media")
        s = check_shape("media_latents", media_latents, "B M R D", D=self.config.dim_media)
        if not bool(torch.isfinite(media_latents).all()):
            raise ValueError("media_latents: holds NaN or inf")
        if media_mask is None:
            return media_latents, torch.ones(s["B"], s["M"], dtype=torch.bool, device=media_latents.device)
        check_shape("media_mask", media_mask, "B M", B=s["B"], M=s["M"])
        return media_latents, _real_first(media_mask.bool(), "media_mask")

    def media_tokens(self, pixel_values: torch.Tensor | None, media_features: torch.Tensor | None,
                     frame_mask: torch.Tensor | None) -> torch.Tensor:
        """The frozen encoder's tokens [B, M, F, S, Dv] of either input, checked (shape, NaN/inf),
        before any standardisation."""
        return media_tokens(self.vision_encoder, pixel_values, media_features, frame_mask, self.config.dim_media)

    def encode_frames(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, M, F, C, H, W] -> [B, M, F, S, Dv]; frames that the mask marks missing are not encoded."""
        return encode_frames(self.vision_encoder, pixel_values, frame_mask)

    # ------------------------------------------------------------------ one call

    @contextmanager
    def _media_call(self, input_ids: torch.Tensor, latents: torch.Tensor | None, present: torch.Tensor | None,
                    cache: FlamingoCache | None, *, generating: bool = False):
        """Hand one call's media to the LM's hooks: K/V of the latents for every gated layer."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError("input_ids: required, a [B, L] tensor; the media marker tokens locate the media")
        if present is not None:
            self._check_batch(input_ids.shape[0], present.shape[0], cache)
        kv = [blk.media_kv(latents) for blk in self.gated_layers] if latents is not None else None
        self._call = _Call(media_kv=kv, present=present, cache=cache, generating=generating)
        try:
            yield
        finally:
            self._call = None

    @staticmethod
    def _check_batch(texts: int, media: int, cache: FlamingoCache | None) -> None:
        """One row of media per sequence; or, continuing a cache whose rows generate repeated
        (num_return_sequences), one row per sample those rows came from."""
        held = cache.marker_counts.shape[0] if cache is not None and cache.marker_counts is not None else None
        if media == texts or (held == texts and texts % media == 0):
            return
        raise ValueError(f"input_ids holds {texts} sequences but pixel_values/media_features hold media for {media} "
                         "samples; give one row of media per sequence (pad missing items with frame_mask)")

    # ------------------------------------------------------------------ hooks

    def _before_lm(self, module, args, kwargs):
        """Runs before every LM forward; steps 1-6 of the module docstring."""
        call = self._call
        if call is None:
            return None  # the LM called on its own (e.g. a distillation teacher): exactly the frozen LM
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise ValueError("input_ids: required, the media marker tokens locate the media")
        self._check_cache(call, args, kwargs)
        if not call.joined:
            self._join_media(call, rows=ids.shape[0])
        offset, past = call.cache.cached_markers() if call.cache is not None else (None, 0)
        midx = media_index(ids, self.config.media_token_id, offset=offset)
        have = call.present.sum(-1) if call.present is not None else torch.zeros_like(midx[:, -1])
        check_media_counts(midx[:, -1], have)
        if call.cache is not None:  # the LM appends these tokens to the cache
            call.cache.marker_counts, call.cache.counted_tokens = midx[:, -1], past + ids.shape[1]
        num_media = call.present.shape[1] if call.present is not None else 0
        num_latents = call.media_kv[0][0].shape[-2] if call.media_kv else 0
        call.routing = MediaRouting.build(midx, num_media=num_media, num_latents=num_latents, mode=self.config.mode)
        return self._embed_markers(ids, args, kwargs)

    def _check_cache(self, call: _Call, args, kwargs) -> None:
        """The call's own FlamingoCache must reach the LM, under whatever keyword transformers
        uses; another cache that already holds tokens cannot go on with media."""
        caches = [v for v in (*args, *kwargs.values()) if isinstance(v, Cache)]
        if call.cache is not None and not any(c is call.cache for c in caches):
            got = [type(c).__name__ for c in caches] or "no cache"
            raise RuntimeError(f"FlamingoModel: {type(self.lm).__name__} was called without the FlamingoCache of this "
                               f"call (it got {got}); expected transformers to pass it on as {self._cache_argument!r}, "
                               "so the media's marker count cannot be followed")
        if call.cache is None and any(c.get_seq_length() > 0 for c in caches):
            raise ValueError("past_key_values: continuing with media needs a multisense.FlamingoCache")

    def _join_media(self, call: _Call, rows: int) -> None:
        """Match the call's media to the LM's `rows` (generate repeats each sample's row for beams
        and num_return_sequences) and append them to the cache's media."""
        kv, present, cache = call.media_kv, call.present, call.cache
        held = cache.marker_counts.shape[0] if cache is not None and cache.marker_counts is not None else None
        if held is not None and held != rows:
            raise ValueError(f"past_key_values: holds {held} sequences but the language model got {rows}")
        if present is not None and present.shape[0] != rows:
            b = present.shape[0]
            if rows % b or not (call.generating or held is not None):
                raise ValueError(f"input_ids holds {rows} sequences but the media are for {b} samples")
            kv = [(k.repeat_interleave(rows // b, 0), v.repeat_interleave(rows // b, 0)) for k, v in kv]
            present = present.repeat_interleave(rows // b, 0)
        if cache is not None:
            kv, present = _append_media(cache.media_kv, cache.media_present, kv, present)
            cache.media_kv, cache.media_present = kv, present
        call.media_kv, call.present, call.joined = kv, present, True

    def _embed_markers(self, ids: torch.Tensor, args, kwargs):
        """Replace the LM's embedding of the marker tokens by the trainable marker embedding, and
        give the added words (beyond the LM's vocabulary) their trainable embeddings."""
        is_marker = ids == self.config.media_token_id
        row = torch.full_like(ids, -1)  # each token's row of added_embeddings, -1 for the LM's own tokens
        for r, token in enumerate(self.config.added_token_ids):
            row = row.masked_fill(ids == token, r)
        added = row >= 0
        if not bool(is_marker.any() or added.any()):
            return None
        embeds = self.lm.get_input_embeddings()(ids.masked_fill(is_marker | added, 0))
        if bool(added.any()):
            embeds = torch.where(added.unsqueeze(-1), self.added_embeddings.to(embeds.dtype)[row.clamp(min=0)], embeds)
        embeds = torch.where(is_marker.unsqueeze(-1), self.marker_embedding.to(embeds.dtype), embeds)
        return (args[1:] if args else args), {**kwargs, "input_ids": None, "inputs_embeds": embeds}

    def _run_gated_layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        call = self._call
        if call is None or call.routing is None:
            return hidden
        kv = call.media_kv[i] if call.media_kv is not None else None
        return self.gated_layers[i](hidden, routing=call.routing, media_kv=kv)

    # ------------------------------------------------------------------ public API

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                frame_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_media_latents: bool = False, media_latents: torch.Tensor | None = None,
                media_mask: torch.Tensor | None = None, **lm_kwargs):
        """Returns the LM's usual output (loss when labels are given, logits, past_key_values),
        plus `media_latents` [B, M, R, Dv] (None without media) with `output_media_latents`.

        Media: pixel_values or media_features (encoded and resampled here), or media_latents
        [B, M, R, Dm] already resampled, with media_mask [B, M] (`media_inputs`).

        The cache (`past_key_values=` or `cache=`, a FlamingoCache) is made here when the LM
        would use one: in eval mode by its config's `use_cache`, never in training mode, where a
        cache would only cost memory (and activation checkpointing would fill it twice).
        Marker tokens never carry loss: the frozen LM head has no logit for a new marker.
        """
        check_text_inputs(input_ids, attention_mask, labels, return_dict=lm_kwargs.get("return_dict"))
        cache = _pop_cache(lm_kwargs)
        use_cache = lm_kwargs.pop("use_cache", None)
        if use_cache is None:
            use_cache = cache is not None or (not self.training and getattr(self.lm.config, "use_cache", True))
        if use_cache and cache is None:
            cache = FlamingoCache(config=self.lm.config)
        if cache is not None:
            lm_kwargs[self._cache_argument] = cache
        latents, present = self.media_inputs(pixel_values, media_features, frame_mask, media_latents, media_mask)
        if labels is not None:
            for own in (self.config.media_token_id, *self.config.added_token_ids):
                labels = labels.masked_fill(labels == own, IGNORE_INDEX)
        with self._media_call(input_ids, latents, present, cache):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=use_cache,
                          **lm_kwargs)
        if output_media_latents:
            out.media_latents = latents
        return out

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                 frame_mask: torch.Tensor | None = None, media_latents: torch.Tensor | None = None,
                 media_mask: torch.Tensor | None = None, **kwargs):
        """transformers' `generate` plus media. Media are encoded and resampled once per call
        (or given as media_latents with media_mask, as in `forward`).

        To continue a conversation, pass `return_dict_in_generate=True`, then the next call gets
        the whole token history as input_ids, `cache=out.cache` (`past_key_values=out.past_key_values`
        before transformers 5.24) and only the new media (one row per sequence, or per sample when
        num_return_sequences repeated the rows); the cache keeps the earlier media's K/V.
        """
        cache = _pop_cache(kwargs)
        config = kwargs.get("generation_config") or self.lm.generation_config
        if cache is None and kwargs.get("use_cache", getattr(config, "use_cache", True)):
            cache = FlamingoCache(config=self.lm.config)
        if cache is not None:
            kwargs[self._cache_argument] = cache
        latents, present = self.media_inputs(pixel_values, media_features, frame_mask, media_latents, media_mask)
        kwargs = generation_options(self, kwargs, written=input_ids.shape[1], expanded=input_ids.shape[1],
                                    marker=self.config.media_token_id)
        with self._media_call(input_ids, latents, present, cache, generating=True):
            return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def train(self, mode: bool = True):
        """Frozen backbones stay in eval mode (no dropout), whatever the mode of the new parts."""
        super().train(mode)
        self.lm.eval()
        if self.vision_encoder is not None:
            self.vision_encoder.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("lm.", "vision_encoder."))}

    def gate_values(self) -> dict[str, list[float]]:
        """|tanh(alpha)| of every gated layer's attention and FF gates, LM layer order."""
        return {"attn": [b.attn_gate.value() for b in self.gated_layers],
                "ff": [b.ff_gate.value() for b in self.gated_layers]}

    def save_pretrained(self, save_directory: str | os.PathLike, *, state_dict: dict | None = None) -> Path:
        """config.json + model.safetensors of the trainable weights, and the tokenizer when the
        model has one; backbones are recorded (absolute path, class, fingerprints), not copied.

        `state_dict`: the trainable weights to write instead of this module's own, e.g. the
        full tensors gathered from a sharded (FSDP2) model.
        """
        config = {"family": "flamingo", **dataclasses.asdict(self.config)}
        return save_checkpoint(save_directory, config, state_dict or self.trainable_state_dict(), self.tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, lm: nn.Module | None = None,
                        vision_encoder: nn.Module | None = None, check_backbones: bool = True,
                        dtype: torch.dtype | None = None, **overrides) -> "FlamingoModel":
        """Rebuild from save_pretrained's directory; backbones load from their recorded local paths
        unless given, as they ran (precision, attention implementation), or all of the model in
        `dtype`. A backbone whose weights differ from the recorded ones is an error (the same
        weights in another precision, e.g. loaded with dtype=torch.bfloat16, are not).

        `overrides` may change how the trained weights are used, not their shapes: `mode`
        (media masking) and `interpolate_frames`.
        """
        config, tensors = read_checkpoint(directory, "flamingo", FlamingoConfig, overrides,
                                          may_change=("mode", "interpolate_frames"))
        lm, vision_encoder = load_backbones(config.lm, config.vision, lm=lm, vision_encoder=vision_encoder,
                                            check=check_backbones, dtype=dtype)
        if vision_encoder is not None:
            vision_encoder = as_encoder(vision_encoder, config.dim_media)
        model = cls(lm, vision_encoder, config)
        load_into(model, tensors, list(model.trainable_state_dict()), str(directory))
        model.tokenizer = saved_tokenizer(directory)
        return model.to(dtype) if dtype is not None else model


def _real_first(present: torch.Tensor, name: str) -> torch.Tensor:
    """present [B, M] bool, checked: media index m of a sample is its m-th real item, so padding
    items must come after the real ones."""
    in_order = present == (torch.arange(present.shape[1], device=present.device) < present.sum(-1, keepdim=True))
    if not in_order.all():
        raise ValueError(f"{name}: empty (padding) media items must come after the real ones in each sample")
    return present


def _marker_init(embeddings: nn.Module, media_token_id: int) -> torch.Tensor:
    """The marker embedding's starting value, in the embedding module's *output* space (Gemma's
    scales its rows by sqrt(width)), so that a marker that is a token of the LM reads exactly as
    that token: its own embedding, or for a new id the mean embedding of the vocabulary.
    At least float32, the precision the trainable parts train in."""
    vocab = embeddings.num_embeddings
    weight = embeddings.weight
    with torch.no_grad():
        if media_token_id < vocab:
            init = embeddings(torch.tensor([media_token_id], device=weight.device))[0]
        else:  # the mean over the vocabulary in chunks: never a [V, D] copy of a large vocabulary
            chunks = torch.arange(vocab, device=weight.device).split(4096)
            init = sum(embeddings(c).double().sum(0) for c in chunks) / vocab
    return init.to(torch.promote_types(weight.dtype, torch.float32)).clone()
