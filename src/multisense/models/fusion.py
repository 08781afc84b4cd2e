"""Perceiver fusion over many sensors (Jaegle et al. 2021): each named sensor's encoder (the
encoder registry: vision, tactile, force_torque, audio) gives tokens and a mask; one Perceiver
latent array cross-attends to all of them at a cost linear in their number; a Perceiver IO
decoder reads a class out of the latents (material, contact event).

With `lm` the latents are instead what a frozen causal language model reads, Flamingo-style
(Alayrac et al. 2022): the fused latents [B, R, D] are one media item per sample, handed as
`media_latents` to a FlamingoModel built without a resampler (its tanh-gated cross-attention
blocks, initialised closed, before every `cross_attn_every`-th LM layer), and the model answers a
prompt holding one media marker, "<image> question : is the finger slipping now ? answer :" ->
" yes". At initialisation it computes exactly the frozen LM's logits, whatever the sensors. The
LM is recorded by identity, not copied (models/io.py); the tokenizer is saved beside.

`fuse="late"` is the baseline the Perceiver is measured against: each sensor's tokens averaged
(over its real ones), projected to `dim`, concatenated (zeros for a missing sensor) and read by
an MLP, with no attention across sensors or time.

Sensors are matched by name. During training, `modality_dropout` drops each optional sensor of a
sample with that probability (all its tokens masked), so the model learns to answer with any
subset; a missing optional sensor at inference is the same as a dropped one.
Positions are times: each token's timestamp (seconds from the window's start, from its
stream's own rate, as its encoder gives it in `EncoderOutput.times`), scaled by the fixed window
`max_seconds` to [-1, 1] (0 s -> -1, max_seconds -> +1), then Fourier features. A token keeps
its position whichever other tokens are masked, and in a shorter window cut from the same
stream, so positions are comparable across samples and windows.

Shape letters: B batch, S_m tokens of sensor m, D latent width, R latents, C classes, L text
length, V the LM's vocabulary.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FamilyConfig, check_choice, check_number
from ..encoders import build_encoder
from ..nn import Modality, Perceiver, PerceiverDecoder
from ..nn.gated_xattn import GATES
from ..tokens import MEDIA_MARKER
from .conventions import ModelConventions
from .flamingo import FlamingoConfig, FlamingoModel
from .io import load_backbones, load_into, read_checkpoint, save_checkpoint, saved_tokenizer


@dataclass
class FusionConfig(FamilyConfig):
    # name -> {"encoder": a registered encoder, "optional": bool (default True), its keyword arguments}
    sensors: dict[str, dict] = field(default_factory=dict)
    dim: int = 128
    num_latents: int = 32
    depth: int = 2
    num_blocks: int = 1
    repeat_cross_attend: bool = False
    share_weights: bool = True
    heads: int = 4
    dim_head: int = 32
    cross_heads: int = 1
    cross_dim_head: int = 64
    ff_mult: int = 2
    chunk_size: int | None = None
    # each sensor's keys get the score bias -log(its real tokens): equal attention per sensor at
    # the start, whatever its token count (nn.perceiver)
    balance_modalities: bool = False
    fourier_bands: int = 8
    # the window that token times (seconds) are scaled by: [0, max_seconds] -> [-1, 1], fixed so
    # that a time means the same position in every sample; a token past it is an error
    max_seconds: float = 3.0
    class_names: list[str] = field(default_factory=list)  # a classification head when not empty
    modality_dropout: float = 0.0
    fuse: str = "perceiver"  # or "late": concatenation of pooled sensors + MLP (the baseline)
    # A frozen causal LM that answers about the latents instead of the head: "default" or "icl"
    # (the embedded LMs, multisense.backbones) or a local Hugging Face directory; None: no LM.
    lm: str | None = None
    # its gated cross-attention blocks (FlamingoConfig's options; their FF width is ff_mult x the LM's)
    cross_attn_every: int = 1
    xattn_heads: int = 4
    xattn_dim_head: int = 32
    gate: str = "scalar"
    qk_norm: bool = False
    # an answer word -> the word the LM says for it, where the LM's vocabulary lacks the word (the
    # embedded LMs know no material: {brick: dax, ...}); the frozen head has logits for no others
    answers: dict[str, str] = field(default_factory=dict)
    # filled when the LM is attached (as FlamingoConfig's): the marker's id, the ids of words added
    # to the tokenizer beyond the LM's vocabulary (trainable input embeddings), the LM's identity
    media_token_id: int | None = None
    added_token_ids: list[int] = field(default_factory=list)
    lm_identity: dict = field(default_factory=dict)

    def validate(self, where: str = "") -> None:
        self.check_positive(where, "dim", "num_latents", "depth", "heads", "dim_head", "cross_heads", "cross_dim_head",
                            "ff_mult", "num_blocks")
        check_number(self.modality_dropout, f"{where}modality_dropout", at_least=0, below=1)
        check_number(self.max_seconds, f"{where}max_seconds", above=0)
        check_choice(self.fuse, FUSE, f"{where}fuse")
        for name, spec in self.sensors.items():
            if not isinstance(spec, dict) or "encoder" not in spec:
                raise ValueError(f"{where}sensors.{name}: expected a mapping naming its encoder, e.g. "
                                 f"{{encoder: tactile}}, got {spec!r}")
        if self.lm is not None:
            if self.class_names:
                raise ValueError(f"{where}class_names: with {where}lm the LM answers in words; leave it unset")
            if self.fuse == "late":
                raise ValueError(f"{where}fuse: 'late' has no latents for an LM to read; use perceiver")
            self.check_positive(where, "cross_attn_every", "xattn_heads", "xattn_dim_head")
            check_choice(self.gate, GATES, f"{where}gate")

    def flamingo_config(self) -> FlamingoConfig:
        """The FlamingoModel that reads the latents: no resampler (the latents are resampled
        media already), media width `dim`."""
        return FlamingoConfig(media_token_id=self.media_token_id, cross_attn_every=self.cross_attn_every,
                              resampler_depth=0, xattn_heads=self.xattn_heads, xattn_dim_head=self.xattn_dim_head,
                              ff_mult=self.ff_mult, gate=self.gate, qk_norm=self.qk_norm, dim_media=self.dim,
                              added_token_ids=list(self.added_token_ids), lm=dict(self.lm_identity))


FUSE = ("perceiver", "late")


class FusionOutput(NamedTuple):
    latents: torch.Tensor  # [B, R, D]
    logits: torch.Tensor | None = None  # [B, C]
    loss: torch.Tensor | None = None
    attention: dict[str, torch.Tensor] | None = None  # sensor -> [B, R] share of the cross-attention mass


class FusionModel(ModelConventions, nn.Module):
    """Sensors -> Perceiver latents -> a class (the head), or an answer in words (`lm`).

    `lm` / `tokenizer`: the frozen LM as objects (e.g. a tiny one built from a config); without
    them, `config.lm` names it and it is loaded here. Words of the tokenizer beyond the LM's
    vocabulary (added before building: the touch world's question words the embedded LM cannot
    spell, `data.tokenizer.add_missing_words`) get trainable input embeddings.
    """

    family = "fusion"
    trains_on_world = True  # the trainer gives it touch-world episodes (data.world), not text and images

    def __init__(self, config: FusionConfig, *, lm: nn.Module | None = None, tokenizer=None):
        super().__init__()
        config = dataclasses.replace(config)  # ours: attaching an LM fills its identity fields
        if not config.sensors:
            raise ValueError("sensors: expected at least one named sensor, e.g. {'touch': {'encoder': 'tactile'}}")
        for name, spec in config.sensors.items():
            if "encoder" not in spec:
                raise ValueError(f"sensors[{name!r}]: name its encoder, e.g. {{'encoder': 'tactile'}}")
        if config.fuse not in FUSE:
            raise ValueError(f"fuse: expected one of {list(FUSE)}, got {config.fuse!r}")
        with_lm = lm is not None or config.lm is not None
        if config.fuse == "late" and (with_lm or not config.class_names):
            raise ValueError("fuse='late': the late-fusion baseline is a classifier (no latents for an LM to read); "
                             "give it class_names and no lm")
        if with_lm and config.class_names:
            raise ValueError(f"class_names: {config.class_names}, but with lm={config.lm!r} the model answers in "
                             "words, through the LM; give one or the other")
        if not (isinstance(config.max_seconds, (int, float)) and config.max_seconds > 0):
            raise ValueError(f"max_seconds: expected the window's length in seconds (> 0), got {config.max_seconds!r}")
        if not 0.0 <= config.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout: expected a probability in [0, 1), got {config.modality_dropout}")
        self.config = config
        self.encoders = nn.ModuleDict({
            name: build_encoder(spec["encoder"], **{k: v for k, v in spec.items() if k not in ("encoder", "optional")})
            for name, spec in config.sensors.items()})
        modalities = {name: Modality(dim=self.encoders[name].dim, position="fourier", pos_dims=1,
                                     num_bands=config.fourier_bands, max_freq=2.0 * config.fourier_bands,
                                     optional=bool(spec.get("optional", True)))
                      for name, spec in config.sensors.items()}
        # the late-fusion baseline has no latents: no Perceiver
        self.perceiver = None if config.fuse == "late" else Perceiver(
            dim=config.dim, num_latents=config.num_latents, modalities=modalities, depth=config.depth,
            num_blocks=config.num_blocks, repeat_cross_attend=config.repeat_cross_attend,
            share_weights=config.share_weights, cross_heads=config.cross_heads, cross_dim_head=config.cross_dim_head,
            heads=config.heads, dim_head=config.dim_head, ff_mult=config.ff_mult, chunk_size=config.chunk_size,
            balance_modalities=config.balance_modalities)
        self.late = None
        if config.fuse == "late":
            names = sorted(config.sensors)
            self.pool = nn.ModuleDict({n: nn.Linear(self.encoders[n].dim, config.dim) for n in names})
            width = config.dim * len(names)
            self.late = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.dim * config.ff_mult), nn.GELU(),
                                      nn.Linear(config.dim * config.ff_mult, len(config.class_names)))
        self.head = None if self.late is not None else (PerceiverDecoder(config.dim, out_dim=len(config.class_names), heads=config.heads,
                                      dim_head=config.dim_head, ff_mult=config.ff_mult)
                     if config.class_names else None)
        self.flamingo, self.tokenizer = None, None
        if with_lm:
            self._attach_lm(lm, tokenizer)

    def _attach_lm(self, lm: nn.Module | None, tokenizer) -> None:
        """The FlamingoModel over the frozen LM that reads the latents; fills the config's record."""
        import transformers

        config = self.config
        if lm is None:
            from .. import backbones

            lm_dir, _ = backbones.resolve(config.lm)
            lm = transformers.AutoModelForCausalLM.from_pretrained(lm_dir)
            tokenizer = tokenizer if tokenizer is not None else transformers.AutoTokenizer.from_pretrained(lm_dir)
        if tokenizer is None and config.media_token_id is None:
            raise ValueError("tokenizer: required with an lm (it gets the <image> marker), or give media_token_id")
        vocab = lm.get_input_embeddings().num_embeddings
        if tokenizer is not None and not config.added_token_ids:  # new words: after the LM's vocabulary
            config.added_token_ids = [i for i in range(vocab, len(tokenizer))
                                      if tokenizer.convert_ids_to_tokens(i) != MEDIA_MARKER]
        self.flamingo = FlamingoModel.from_lm(lm, tokenizer=tokenizer, media_token_id=config.media_token_id,
                                              config=config.flamingo_config())
        config.media_token_id = self.flamingo.config.media_token_id
        config.lm_identity = self.flamingo.config.lm
        if config.lm is None:  # given as an object: its directory, where it has one
            config.lm = config.lm_identity.get("name_or_path") or None
        self.tokenizer = tokenizer

    @property
    def token_labels(self) -> bool:
        """train.loop.fit: with an LM, `labels` are token labels [B, L] and the loop takes the
        loss of the logits; without, they are class ids and forward returns the loss."""
        return self.flamingo is not None

    def encode(self, sensors: dict[str, dict]) -> tuple[dict, dict, dict]:
        """Each sensor's encoder: (tokens, masks, positions), name -> [B, S, D_m] / [B, S] / [B, S, 1];
        positions are the tokens' times scaled by max_seconds to [-1, 1]."""
        tokens, masks, times, _ = self._encode(sensors)
        return tokens, masks, self.positions(times)

    def positions(self, times: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """name -> times [B, S] in seconds -> positions [B, S, 1]: 0 s -> -1, max_seconds -> +1."""
        return {name: (t * (2.0 / self.config.max_seconds) - 1.0).unsqueeze(-1) for name, t in times.items()}

    def _encode(self, sensors: dict[str, dict]) -> tuple[dict, dict, dict, float | None]:
        """(tokens, masks, times [B, S] seconds) per sensor and the longest stream's duration (None
        where no encoder gives one)."""
        unknown = [n for n in sensors if n not in self.encoders]
        if unknown:
            raise ValueError(f"sensors: no sensor named {unknown[0]!r}; this model was built for {list(self.encoders)}")
        tokens, masks, times, durations = {}, {}, {}, []
        for name, inputs in sensors.items():
            encoder = self.encoders[name]
            if not isinstance(inputs, dict):
                raise TypeError(f"sensors[{name!r}]: expected the encoder's keyword inputs as a dict "
                                f"({type(encoder).layout}), got {type(inputs).__name__}")
            try:
                out = encoder(**inputs)
            except ValueError as e:  # which sensor: two sensors may share an encoder type
                raise ValueError(f"sensors[{name!r}]: {e}") from e
            if out.times is None:
                raise ValueError(f"sensors[{name!r}]: its {type(encoder).__name__} gives no token times "
                                 "(EncoderOutput.times, seconds from the window's start); positions are times")
            mask = out.mask if out.mask is not None else out.tokens.new_ones(out.tokens.shape[:2], dtype=torch.bool)
            tokens[name], masks[name], times[name] = out.tokens, mask, out.times.to(torch.float32)
            if out.duration is not None:
                durations.append(float(out.duration))
        self._check_window(times, masks)
        return tokens, masks, times, max(durations, default=None)

    def _check_window(self, times: dict, masks: dict) -> None:
        """A real token past max_seconds would alias an earlier time in the Fourier features."""
        if not times:
            return
        last = torch.stack([t.masked_fill(~masks[n], 0.0).amax() if t.numel() else t.new_zeros(())
                            for n, t in times.items()])
        limit = self.config.max_seconds * (1 + 1e-6)
        if float(last.max()) > limit:
            name, worst = next((n, float(v)) for n, v in zip(times, last) if float(v) > limit)
            raise ValueError(f"sensors[{name!r}]: tokens at up to {worst:g} s, past max_seconds="
                             f"{self.config.max_seconds:g} (the window that positions are scaled by); give a "
                             "window of at most max_seconds or build the model with a larger max_seconds")

    def drop_sensors(self, masks: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        """Modality dropout: mask all of an optional sensor's tokens in a sample with probability p,
        never every sensor of a sample."""
        p = self.config.modality_dropout
        if not (self.training and p > 0):
            return masks
        names = list(masks)
        optional = torch.tensor([bool(self.config.sensors[n].get("optional", True)) for n in names])
        present = torch.stack([masks[n].any(-1) for n in names], -1)  # [B, M]
        drop = (torch.rand(present.shape, generator=generator) < p) & optional
        drop = drop.to(present.device)
        drop &= (present & ~drop).any(-1, keepdim=True)  # a sample that would lose every sensor keeps them
        return {n: masks[n] & ~drop[:, j:j + 1] for j, n in enumerate(names)}

    def fuse(self, sensors: dict[str, dict], *, return_attention: bool = False):
        """The Perceiver's latents [B, R, D] (and with `return_attention` each sensor's share of
        the cross-attention mass, name -> [B, R])."""
        if self.late is not None:
            raise ValueError("the late-fusion baseline has no latents or attention (fuse='late')")
        tokens, masks, positions = self.encode(sensors)
        masks = self.drop_sensors(masks)
        return self.perceiver(tokens, mask=masks, positions=positions, return_attention=return_attention)

    def forward(self, sensors: dict[str, dict], labels: torch.Tensor | None = None, *,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                return_attention: bool = False, **lm_kwargs):
        """sensors: name -> the encoder's keyword inputs ({"frames": ..., "mask": ...}).

        Head: labels [B] class ids -> FusionOutput. With an LM: input_ids / attention_mask [B, L]
        (one media marker each), labels [B, L] token labels (optional) -> the LM's output (loss,
        logits [B, L, V], past_key_values), with `latents` [B, R, D] (and `attention`) added.
        """
        if self.flamingo is not None:
            return self._lm_forward(sensors, input_ids, attention_mask, labels, return_attention, lm_kwargs)
        if input_ids is not None or lm_kwargs:
            raise ValueError(f"{'input_ids' if input_ids is not None else sorted(lm_kwargs)[0]}: this fusion model has "
                             "no language model (build it with lm=...); it takes sensors and labels")
        if self.late is not None:
            if return_attention:
                raise ValueError("return_attention: the late-fusion baseline has no attention (fuse='late')")
            tokens, masks, _ = self.encode(sensors)
            return self._late(tokens, self.drop_sensors(masks), labels)
        out = self.fuse(sensors, return_attention=return_attention)
        latents, attention = out if return_attention else (out, None)
        logits = self.head(latents)[:, 0] if self.head is not None else None
        loss = None
        if labels is not None:
            if logits is None:
                raise ValueError("labels: this model has no classification head (build it with class_names)")
            loss = F.cross_entropy(logits, labels)
        return FusionOutput(latents, logits, loss, attention)

    # ------------------------------------------------------------------------------ with an LM

    def _media(self, sensors: dict[str, dict], input_ids: torch.Tensor, lm_kwargs: dict,
               return_attention: bool = False):
        """The latents [B, R, D] (one media item per sample) and attention, after checking the prompts."""
        given = [k for k in ("pixel_values", "media_features", "frame_mask", "media_latents", "media_mask")
                 if lm_kwargs.get(k) is not None]
        if given:
            raise ValueError(f"{given[0]}: a fusion model's media are its fused sensors (sensors=...); it takes no "
                             "pixel_values, media_features or media_latents")
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError("input_ids: required with an LM, a [B, L] tensor of prompts with one media marker each")
        marker = self.config.media_token_id
        counts = (input_ids == marker).sum(-1)
        bad = (counts != 1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"input_ids: sample {bad[0]} holds {int(counts[bad[0]])} media markers ({MEDIA_MARKER}, id "
                             f"{marker}); the fused sensors are one media item per sample, so each prompt needs "
                             "exactly one marker, before the text that reads them")
        out = self.fuse(sensors, return_attention=return_attention)
        latents, attention = out if return_attention else (out, None)
        return latents, attention

    def _lm_forward(self, sensors, input_ids, attention_mask, labels, return_attention, lm_kwargs):
        latents, attention = self._media(sensors, input_ids, lm_kwargs, return_attention)
        out = self.flamingo(input_ids, attention_mask=attention_mask, labels=labels,
                            media_latents=latents.unsqueeze(1), **lm_kwargs)
        out.latents = latents
        if return_attention:
            out.attention = attention
        return out

    @torch.no_grad()
    def generate(self, sensors: dict[str, dict], input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        """transformers' `generate` over the prompts (left-padded, one marker each), the sensors
        fused once per call; e.g. greedy answers: max_new_tokens=2, do_sample=False."""
        if self.flamingo is None:
            raise ValueError("generate: this fusion model has no language model (build it with lm=...)")
        latents, _ = self._media(sensors, input_ids, kwargs)
        return self.flamingo.generate(input_ids, attention_mask=attention_mask, media_latents=latents.unsqueeze(1),
                                      **kwargs)

    def lm_tokens(self, word: str) -> list[int]:
        """The LM's token ids of an answer `word` (with its leading space), checked: a frozen LM
        can only say words its head has logits for."""
        if self.flamingo is None:
            raise ValueError("lm_tokens: this fusion model has no language model")
        said = self.config.answers.get(word, word)
        ids = self.tokenizer(" " + said, add_special_tokens=False)["input_ids"]
        vocab = self.flamingo.lm.get_input_embeddings().num_embeddings
        if not ids or any(i >= vocab or i == self.tokenizer.unk_token_id for i in ids):
            raise ValueError(f"answers: the LM ({self.config.lm}) has no word for {said!r}; a frozen LM answers only "
                             f"with its own tokens; map it to one of its words, e.g. model.fusion.answers="
                             f"{{{word}: ...}}")
        return ids

    def _late(self, tokens: dict, masks: dict, labels: torch.Tensor | None) -> FusionOutput:
        """Late fusion: masked mean per sensor -> Linear -> concatenation (zeros where missing) -> MLP."""
        B = next(iter(tokens.values())).shape[0]
        pooled = []
        for name in sorted(self.config.sensors):
            if name not in tokens:
                if not self.config.sensors[name].get("optional", True):
                    raise ValueError(f"sensors: {name!r} is not optional and was not given")
                pooled.append(self.pool[name].weight.new_zeros(B, self.config.dim))
                continue
            m = masks[name].unsqueeze(-1).to(tokens[name].dtype)  # [B, S, 1]
            mean = (tokens[name] * m).sum(1) / m.sum(1).clamp(min=1)
            pooled.append(self.pool[name](mean) * masks[name].any(-1, keepdim=True))  # a dropped sensor: zeros
        features = torch.stack(pooled, 1)  # [B, M, D]
        logits = self.late(features.flatten(1))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return FusionOutput(features, logits, loss, None)

    @torch.no_grad()
    def attention_over_time(self, sensors: dict[str, dict], bins: int = 12, *,
                            seconds: float | None = None) -> torch.Tensor:
        """[B, bins, M] the first cross-attention's mass on each sensor's tokens (sorted names, as
        `self.perceiver.names`, the sensors given) in each of `bins` equal slices of the window
        [0, seconds] by the tokens' times, mean over latents and heads. `seconds`: by default the
        longest given stream's duration (max_seconds where no encoder gives one); a token past it
        counts in the last slice.

        One softmax over the whole window (`Perceiver.attention_weights`), its weights summed per
        slice: together the slices and sensors hold all of a sample's attention (1), and each
        sensor's slices its share in `forward(return_attention=True)`. A slice's own split between
        the sensors is its row divided by the row's sum. (Attending to one slice at a time would
        not measure this: balance_modalities' bias would be recomputed from that slice's token
        counts.)"""
        if self.late is not None:
            raise ValueError("attention_over_time: the late-fusion baseline has no attention (fuse='late')")
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins: expected a positive number of time slices, got {bins!r}")
        if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0):
            raise ValueError(f"seconds: expected the window's length in seconds (> 0), got {seconds!r}")
        tokens, masks, times, duration = self._encode(sensors)
        weights = self.perceiver.attention_weights(tokens, mask=masks, positions=self.positions(times))
        window = seconds or duration or self.config.max_seconds
        inner_edges = torch.linspace(0, window, bins + 1)[1:-1]
        out = []
        for name in self.perceiver.names:
            if name not in weights:
                continue
            t = times[name].contiguous()  # [B, S] seconds
            # slice b holds edges[b] <= t < edges[b + 1]; the last one also t = 1
            slot = torch.bucketize(t, inner_edges.to(t.device, t.dtype), right=True)
            per_slice = F.one_hot(slot, bins).to(weights[name].dtype)  # [B, S, bins]
            out.append((weights[name].mean(1) @ per_slice).mean(1))  # [B, R, S] @ [B, S, bins] -> [B, bins]
        return torch.stack(out, -1)

    # ------------------------------------------------------------------------------ save / load

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight but the frozen LM's: the encoders are trained with the model."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("flamingo.lm.")}

    def save_pretrained(self, save_directory: str | os.PathLike, *, state_dict: dict | None = None):
        """config.json + model.safetensors of the trained weights (`state_dict`: the trainer's
        gathered copy), and the tokenizer when there is an LM, which is recorded, not copied."""
        config = {"family": self.family, **dataclasses.asdict(self.config)}
        tensors = state_dict if state_dict is not None else self.trainable_state_dict()
        return save_checkpoint(save_directory, config, {k: v.detach() for k, v in tensors.items()}, self.tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, lm: nn.Module | None = None,
                        check_backbones: bool = True, dtype: torch.dtype | None = None,
                        **overrides) -> "FusionModel":
        """Rebuild from save_pretrained's directory; an LM loads from its recorded local path
        unless given (weights that differ from the recorded ones are an error), as it ran, or
        all of the model in `dtype`."""
        config, tensors = read_checkpoint(directory, cls.family, FusionConfig, overrides, may_change=("chunk_size",))
        tokenizer = None
        if config.lm_identity:
            lm, _ = load_backbones(config.lm_identity, {}, lm=lm, check=check_backbones, dtype=dtype)
            tokenizer = saved_tokenizer(directory)
        model = cls(config, lm=lm, tokenizer=tokenizer)
        load_into(model, tensors, list(model.trainable_state_dict()), str(directory))
        return model.to(dtype) if dtype is not None else model

    def language_model(self) -> nn.Module | None:
        return self.flamingo.lm if self.flamingo is not None else None
