"""Flamingo (Alayrac et al. 2022) over any Hugging Face causal language model.

A frozen vision encoder turns each frame into tokens, a Perceiver Resampler compresses every
media item (an image, or a clip of F frames) to R latents, and tanh-gated cross-attention
blocks, initialised closed, run before every n-th layer of the frozen LM. At step 0 the
model computes the frozen LM's logits bit for bit, and it learns to look.

The gated blocks are attached with forward pre-hooks (`multisense.lm.inject`), so the LM
keeps its module tree, weight names, KV cache and `generate`. Media travel as arguments:
for the length of one call they sit in a private session, never on the layers.

Shape letters: B batch, L text length, M media items, F frames, C/H/W pixels, S tokens per
frame, Dv vision width, R latents, D LM width.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import DynamicCache

from ..config import check_keys, from_dict
from ..encoders import as_encoder, load_vision_encoder
from ..lm.adapters import find_decoder_layers
from ..lm.inject import cross_attn_layer_ids, hook_before_layers
from ..nn import GatedCrossAttentionBlock, MediaRouting, PerceiverResampler, check_media_counts, media_index
from ..nn.checks import check_shape
from .io import fingerprint, load_checkpoint, load_into, save_checkpoint


@dataclass
class FlamingoConfig:
    """Everything that shapes a FlamingoModel apart from its two frozen backbones."""

    media_token_id: int | None = None
    cross_attn_every: int = 1
    num_latents: int = 64
    resampler_depth: int = 6
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
    # from the first steps (docs/results.md: digits at chance after 800 steps without it).
    standardize_media: bool = False
    decoder_layers_attr: str | None = None
    dim_media: int | None = None
    lm: dict = field(default_factory=dict)  # identity of the frozen LM (filled by from_lm)
    vision: dict = field(default_factory=dict)  # identity of the frozen vision encoder

    @classmethod
    def from_dict(cls, values: dict) -> "FlamingoConfig":
        return from_dict(cls, values)

    def replace(self, **values) -> "FlamingoConfig":
        check_keys(FlamingoConfig, values)
        return dataclasses.replace(self, **values)


class FlamingoCache(DynamicCache):
    """The LM's KV cache plus, per gated layer, the K/V of the media latents seen so far.

    `marker_counts` [B] counts the media markers among the cached tokens, so the media index
    of a new token continues where the cache left off; a later turn may append new media.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.media_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # 2 x [B, M, H, R, Dh]
        self.media_present: torch.Tensor | None = None  # [B, M] bool
        self.marker_counts: torch.Tensor | None = None  # [B]


@dataclass
class _Session:
    """Media of the call in flight: per gated layer K/V of the latents, and which items exist."""

    media_kv: list[tuple[torch.Tensor, torch.Tensor]] | None
    present: torch.Tensor | None  # [B, M] bool
    routing: MediaRouting | None = None


def _cat_media(old, new, dim: int = 1):
    if old is None:
        return new
    if new is None:
        return old
    if isinstance(old, torch.Tensor):
        return torch.cat((old, new), dim=dim)
    return [(torch.cat((ko, kn), dim), torch.cat((vo, vn), dim)) for (ko, vo), (kn, vn) in zip(old, new)]


class FlamingoModel(nn.Module):
    """A frozen HF causal LM and vision encoder, joined by a trainable resampler and gated blocks."""

    def __init__(self, lm: nn.Module, vision_encoder: nn.Module | None, config: FlamingoConfig):
        super().__init__()
        if config.media_token_id is None:
            raise ValueError("media_token_id: required (or pass tokenizer= to from_lm to add an <image> token)")
        self.config = config
        self.lm = lm
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

        if config.standardize_media:  # identity until calibrate_media; saved with the trainable weights
            self.register_buffer("media_mean", torch.zeros(dim_media))
            self.register_buffer("media_std", torch.ones(dim_media))
        self.resampler = PerceiverResampler(
            dim=dim_media, depth=config.resampler_depth, num_latents=config.num_latents,
            heads=config.resampler_heads, dim_head=config.resampler_dim_head, ff_mult=config.ff_mult,
            max_frames=config.max_frames, interpolate_frames=config.interpolate_frames)
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
        # the marker's embedding is ours and trainable; the LM's embedding matrix stays frozen
        vocab = embeddings.num_embeddings
        w = embeddings.weight.detach()
        init = w[config.media_token_id] if config.media_token_id < vocab else w.float().mean(0).to(w.dtype)
        self.marker_embedding = nn.Parameter(init.clone())
        self._session: _Session | None = None
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

        With a `tokenizer` and no `media_token_id`, an `<image>` special token is added to it.
        """
        config = (config or FlamingoConfig()).replace(**overrides)
        if media_token_id is None and config.media_token_id is None and tokenizer is not None:
            tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
            media_token_id = tokenizer.convert_tokens_to_ids("<image>")
        if media_token_id is not None:
            config.media_token_id = media_token_id
        config.lm = {"name_or_path": getattr(lm.config, "_name_or_path", "") or "",
                     "model_type": lm.config.model_type, "class": type(lm).__name__,
                     "fingerprint": fingerprint(lm)}
        if vision_encoder is not None:
            enc = as_encoder(vision_encoder, config.dim_media)
            hf = getattr(enc, "model", None)
            config.vision = {"name_or_path": getattr(getattr(hf, "config", None), "_name_or_path", "") or "",
                             "class": type(hf if hf is not None else enc).__name__, "fingerprint": fingerprint(enc)}
            vision_encoder = enc
        return cls(lm, vision_encoder, config)

    # ------------------------------------------------------------------ media

    def encode_media(self, pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                     frame_mask: torch.Tensor | None = None):
        """Encode and resample media -> (latents [B, M, R, Dv], present [B, M]), or (None, None)."""
        if pixel_values is None and media_features is None:
            return None, None
        feats = self.media_tokens(pixel_values, media_features, frame_mask)
        B, M, F = feats.shape[:3]
        if self.config.standardize_media:
            feats = (feats - self.media_mean.to(feats.dtype)) / self.media_std.to(feats.dtype)
        if frame_mask is not None:
            check_shape("frame_mask", frame_mask, "B M F", B=B, M=M, F=F)
            frame_mask = frame_mask.bool()
            present = frame_mask.any(-1)
            in_order = present == (torch.arange(M, device=present.device) < present.sum(-1, keepdim=True))
            if not in_order.all():
                raise ValueError("frame_mask: empty (padding) media items must come after the real ones in each sample")
        else:
            present = torch.ones(B, M, dtype=torch.bool, device=feats.device)
        return self.resampler(feats, frame_mask), present

    def media_tokens(self, pixel_values: torch.Tensor | None, media_features: torch.Tensor | None,
                     frame_mask: torch.Tensor | None) -> torch.Tensor:
        """The frozen encoder's tokens [B, M, F, S, Dv] of either input, checked (shape, NaN/inf),
        before any standardisation."""
        if (pixel_values is None) == (media_features is None):
            raise ValueError("pass exactly one of pixel_values and media_features")
        if pixel_values is not None:
            check_shape("pixel_values", pixel_values, "B M F C H W")
            if self.vision_encoder is None:
                raise ValueError("pixel_values: this model has no vision_encoder; pass media_features instead")
            feats = self.encode_frames(pixel_values, frame_mask)
        else:
            check_shape("media_features", media_features, "B M F S Dv", Dv=self.config.dim_media)
            feats = media_features
        if not torch.isfinite(feats).all():
            raise ValueError("pixel_values/media_features: contain NaN or inf")
        return feats

    def encode_frames(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, M, F, C, H, W] -> [B, M, F, S, Dv]; frames that the mask marks missing are not encoded."""
        B, M, F = pixel_values.shape[:3]
        frames = pixel_values.flatten(0, 2)
        keep = frame_mask.flatten().nonzero().squeeze(1) if frame_mask is not None else None
        trainable = any(p.requires_grad for p in self.vision_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            tokens = self.vision_encoder(frames if keep is None else frames.index_select(0, keep)).tokens
        if keep is not None:
            tokens = tokens.new_zeros(B * M * F, *tokens.shape[1:]).index_copy(0, keep, tokens)
        return tokens.view(B, M, F, *tokens.shape[1:])

    @torch.no_grad()
    def calibrate_media(self, batches) -> "FlamingoModel":
        """Measure the per-channel mean and std of the frozen encoder's features (standardize_media).

        `batches`: an iterable of dicts holding `pixel_values` [B, M, F, C, H, W] or
        `media_features` [B, M, F, S, Dv], and optionally `frame_mask` [B, M, F] (as `collate`
        makes them); only real frames count. The encoder is frozen, so this is done once,
        before training, and the statistics are saved with the trainable weights.
        """
        if not self.config.standardize_media:
            raise ValueError("calibrate_media: this model was built with standardize_media=False")
        count, total, squares = 0, 0.0, 0.0
        for batch in batches:
            mask = batch.get("frame_mask")
            feats = self.media_tokens(batch.get("pixel_values"), batch.get("media_features"), mask)
            tokens = feats[mask.bool()] if mask is not None else feats.flatten(0, 2)  # [N, S, Dv]
            tokens = tokens.flatten(0, 1).double()
            count += tokens.shape[0]
            total = total + tokens.sum(0)
            squares = squares + tokens.square().sum(0)
        if count < 2:
            raise ValueError("calibrate_media: batches held fewer than 2 media tokens")
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        self.media_mean.copy_(mean)
        # a channel (nearly) constant on the calibration media is centred but not blown up
        self.media_std.copy_(std.clamp_min(max(1e-3 * float(std.mean()), 1e-12)))
        return self

    @contextmanager
    def _media(self, latents: torch.Tensor | None, present: torch.Tensor | None, cache=None):
        """Open a session for one call: K/V of the latents for every gated layer, joined to a cache's media."""
        kv = [blk.media_kv(latents) for blk in self.gated_layers] if latents is not None else None
        if isinstance(cache, FlamingoCache):
            kv, present = _cat_media(cache.media_kv, kv), _cat_media(cache.media_present, present)
            cache.media_kv, cache.media_present = kv, present
        self._session = _Session(media_kv=kv, present=present)
        try:
            yield
        finally:
            self._session = None

    # ------------------------------------------------------------------ hooks

    def _before_lm(self, module, args, kwargs):
        """Runs before every LM forward: find each token's media, check the counts, embed markers."""
        st = self._session
        if st is None:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise ValueError("input_ids: required, the media marker tokens locate the media")
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        if past > 0 and not isinstance(cache, FlamingoCache):
            raise ValueError("past_key_values: continuing with media needs a FlamingoCache")
        offset = cache.marker_counts if past > 0 else None
        midx = media_index(ids, self.config.media_token_id, offset=offset)

        if st.media_kv is not None and st.media_kv[0][0].shape[0] != ids.shape[0]:
            # generate() expanded the batch (num_return_sequences / beams): expand the media alike
            rep = ids.shape[0] // st.media_kv[0][0].shape[0]
            st.media_kv = [(k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)) for k, v in st.media_kv]
            st.present = st.present.repeat_interleave(rep, 0)
            if isinstance(cache, FlamingoCache):
                cache.media_kv, cache.media_present = st.media_kv, st.present
        num_media = st.present.shape[1] if st.present is not None else 0
        have = st.present.sum(-1) if st.present is not None else torch.zeros_like(midx[:, -1])
        check_media_counts(midx[:, -1], have)
        if isinstance(cache, FlamingoCache) and kwargs.get("use_cache", True) is not False:
            cache.marker_counts = midx[:, -1]
        num_latents = st.media_kv[0][0].shape[-2] if st.media_kv else 0
        st.routing = MediaRouting.build(midx, num_media=num_media, num_latents=num_latents, mode=self.config.mode)

        is_marker = ids == self.config.media_token_id
        if bool(is_marker.any()):
            emb = self.lm.get_input_embeddings()
            safe_ids = ids.masked_fill(is_marker, 0)
            embeds = torch.where(is_marker.unsqueeze(-1), self.marker_embedding.to(emb.weight.dtype), emb(safe_ids))
            kwargs = {**kwargs, "input_ids": None, "inputs_embeds": embeds}
            args = args[1:] if args else args
        return args, kwargs

    def _run_gated_layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        st = self._session
        if st is None or st.routing is None:
            return hidden
        kv = st.media_kv[i] if st.media_kv is not None else None
        return self.gated_layers[i](hidden, routing=st.routing, media_kv=kv)

    # ------------------------------------------------------------------ public API

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                frame_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_media_latents: bool = False, **lm_kwargs):
        """Returns the LM's usual output (loss when labels are given, logits, past_key_values),
        plus `media_latents` [B, M, R, Dv] (None without media) with `output_media_latents`.

        Marker tokens never carry loss: the frozen LM head has no logit for a new marker.
        """
        latents, present = self.encode_media(pixel_values, media_features, frame_mask)
        if labels is not None:
            labels = labels.masked_fill(labels == self.config.media_token_id, -100)
        with self._media(latents, present, lm_kwargs.get("past_key_values")):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **lm_kwargs)
        if output_media_latents:
            out.media_latents = latents
        return out

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                 frame_mask: torch.Tensor | None = None, past_key_values=None, **kwargs):
        """transformers' `generate` plus media. Media are encoded and resampled once per call.

        To continue a conversation, pass `return_dict_in_generate=True`, then the next call gets
        the whole token history as input_ids, `past_key_values=out.past_key_values` and only the
        new media; the cache keeps the earlier media's K/V.
        """
        latents, present = self.encode_media(pixel_values, media_features, frame_mask)
        if kwargs.get("use_cache", True) and past_key_values is None:
            past_key_values = FlamingoCache(config=self.lm.config)
        if self.config.media_token_id < self.lm.get_input_embeddings().num_embeddings:
            kwargs["suppress_tokens"] = list(kwargs.get("suppress_tokens") or []) + [self.config.media_token_id]
        with self._media(latents, present, past_key_values):
            return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask,
                                    past_key_values=past_key_values, **kwargs)

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
        """config.json + model.safetensors of the trainable weights; backbones are recorded, not copied.

        `state_dict`: the trainable weights to write instead of this module's own, e.g. the
        full tensors gathered from a sharded (FSDP2) model.
        """
        config = {"architecture": "flamingo", **dataclasses.asdict(self.config)}
        return save_checkpoint(save_directory, config, state_dict or self.trainable_state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, lm: nn.Module | None = None,
                        vision_encoder: nn.Module | None = None, check_backbones: bool = True,
                        **overrides) -> "FlamingoModel":
        """Rebuild from save_pretrained's directory; backbones load from their recorded local paths
        unless given. A backbone whose weights differ from the recorded ones is an error.

        `overrides` may change how the trained weights are used, not their shapes: `mode`
        (media masking) and `interpolate_frames`.
        """
        values, tensors = load_checkpoint(directory)
        if values.pop("architecture", None) != "flamingo":
            raise ValueError(f"{directory}: not a Flamingo checkpoint")
        fixed = sorted(set(overrides) - {"mode", "interpolate_frames"})
        if fixed:
            raise ValueError(f"from_pretrained: {fixed} would change the trained weights' shapes; "
                             "only mode and interpolate_frames may be overridden")
        config = FlamingoConfig.from_dict({**values, **overrides})
        if lm is None:
            lm = _backbone_class(config.lm, "lm", transformers.AutoModelForCausalLM).from_pretrained(
                config.lm["name_or_path"])
        if vision_encoder is None and config.vision:
            tower = _backbone_class(config.vision, "vision_encoder")
            vision_encoder = load_vision_encoder(config.vision["name_or_path"], tower)
        if vision_encoder is not None:
            vision_encoder = as_encoder(vision_encoder, config.dim_media)
        if check_backbones:
            for name, module, ident in (("lm", lm, config.lm), ("vision_encoder", vision_encoder, config.vision)):
                if module is not None and ident.get("fingerprint") and fingerprint(module) != ident["fingerprint"]:
                    raise ValueError(f"{name}: its weights differ from those this checkpoint was trained on "
                                     f"({ident.get('name_or_path') or 'unnamed'}); pass check_backbones=False "
                                     "to load anyway")
        model = cls(lm, vision_encoder, config)
        load_into(model, tensors, list(model.trainable_state_dict()), str(directory))
        return model


def _backbone_class(identity: dict, name: str, auto=None) -> type:
    """The transformers class a checkpoint recorded for a frozen backbone, once its directory is
    known to exist here."""
    path = identity.get("name_or_path")
    if not path or not Path(path).is_dir():
        raise ValueError(f"{name}: the checkpoint records {path!r}, not a local directory; pass {name}= explicitly")
    cls = getattr(transformers, identity.get("class", ""), None) or auto
    if cls is None:
        raise ValueError(f"{name}: unknown class {identity.get('class')!r}; pass {name}= explicitly")
    return cls
