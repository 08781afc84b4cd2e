"""Perceiver fusion over many sensors (Jaegle et al. 2021): each named sensor's encoder (the
encoder registry: vision, tactile, force_torque, audio) gives tokens and a mask; one Perceiver
latent array cross-attends to all of them at a cost linear in their number; a Perceiver IO
decoder reads a class out of the latents (material, contact event). The latents are also what a
language model cross-attends to (the Flamingo path), added in a later step.

`fuse="late"` is the baseline the Perceiver is measured against: each sensor's tokens averaged
(over its real ones), projected to `dim`, concatenated (zeros for a missing sensor) and read by
an MLP, with no attention across sensors or time.

Sensors are matched by name. During training, `modality_dropout` drops each optional sensor of a
sample with that probability (all its tokens masked), so the model learns to answer with any
subset; a missing optional sensor at inference is the same as a dropped one.
Each sensor's tokens get Fourier features of their time within the sample's window, from its
own real tokens: -1 at the first, +1 at the last.

Shape letters: B batch, S_m tokens of sensor m, D latent width, R latents, C classes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FamilyConfig
from ..encoders import build_encoder
from ..nn import Modality, Perceiver, PerceiverDecoder
from .io import load_checkpoint, load_into, save_checkpoint


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
    fourier_bands: int = 8
    class_names: list[str] = field(default_factory=list)  # a classification head when not empty
    modality_dropout: float = 0.0
    fuse: str = "perceiver"  # or "late": concatenation of pooled sensors + MLP (the baseline)


FUSE = ("perceiver", "late")


class FusionOutput(NamedTuple):
    latents: torch.Tensor  # [B, R, D]
    logits: torch.Tensor | None = None  # [B, C]
    loss: torch.Tensor | None = None
    attention: dict[str, torch.Tensor] | None = None  # sensor -> [B, R] share of the cross-attention mass


def relative_times(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool -> [B, S, 1] in [-1, 1]: each real token's place among the sample's real tokens."""
    index = mask.long().cumsum(-1) - 1  # 0 .. n-1 on real tokens
    count = mask.sum(-1, keepdim=True).clamp(min=2) - 1
    return (index.clamp(min=0) / count * 2 - 1).unsqueeze(-1).float()


class FusionModel(nn.Module):
    family = "fusion"
    token_labels = False  # `labels` are class ids; forward returns the loss (train.loop.fit)

    def __init__(self, config: FusionConfig):
        super().__init__()
        if not config.sensors:
            raise ValueError("sensors: expected at least one named sensor, e.g. {'touch': {'encoder': 'tactile'}}")
        for name, spec in config.sensors.items():
            if "encoder" not in spec:
                raise ValueError(f"sensors[{name!r}]: name its encoder, e.g. {{'encoder': 'tactile'}}")
        if config.fuse not in FUSE:
            raise ValueError(f"fuse: expected one of {list(FUSE)}, got {config.fuse!r}")
        if config.fuse == "late" and not config.class_names:
            raise ValueError("fuse='late': the late-fusion baseline is a classifier; give it class_names")
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
            heads=config.heads, dim_head=config.dim_head, ff_mult=config.ff_mult, chunk_size=config.chunk_size)
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

    def encode(self, sensors: dict[str, dict]) -> tuple[dict, dict, dict]:
        """Each sensor's encoder: (tokens, masks, positions), name -> [B, S, D_m] / [B, S] / [B, S, 1]."""
        unknown = [n for n in sensors if n not in self.encoders]
        if unknown:
            raise ValueError(f"sensors: no sensor named {unknown[0]!r}; this model was built for {list(self.encoders)}")
        tokens, masks, positions = {}, {}, {}
        for name, inputs in sensors.items():
            if not isinstance(inputs, dict):
                raise TypeError(f"sensors[{name!r}]: expected the encoder's keyword inputs as a dict "
                                f"({type(self.encoders[name]).layout}), got {type(inputs).__name__}")
            out = self.encoders[name](**inputs)
            mask = out.mask if out.mask is not None else out.tokens.new_ones(out.tokens.shape[:2], dtype=torch.bool)
            tokens[name], masks[name], positions[name] = out.tokens, mask, relative_times(mask)
        return tokens, masks, positions

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

    def forward(self, sensors: dict[str, dict], labels: torch.Tensor | None = None, *,
                return_attention: bool = False) -> FusionOutput:
        """sensors: name -> the encoder's keyword inputs ({"frames": ..., "mask": ...}); labels [B] class ids."""
        tokens, masks, positions = self.encode(sensors)
        masks = self.drop_sensors(masks)
        if self.late is not None:
            if return_attention:
                raise ValueError("return_attention: the late-fusion baseline has no attention (fuse='late')")
            return self._late(tokens, masks, labels)
        out = self.perceiver(tokens, mask=masks, positions=positions, return_attention=return_attention)
        latents, attention = out if return_attention else (out, None)
        logits = self.head(latents)[:, 0] if self.head is not None else None
        loss = None
        if labels is not None:
            if logits is None:
                raise ValueError("labels: this model has no classification head (build it with class_names)")
            loss = F.cross_entropy(logits, labels)
        return FusionOutput(latents, logits, loss, attention)

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
    def attention_over_time(self, sensors: dict[str, dict], bins: int = 12) -> torch.Tensor:
        """[B, bins, M] share of the first cross-attention's mass on each sensor (sorted names, as
        `self.perceiver.names`) among the tokens of each of `bins` equal slices of the window.

        The first cross-attention's queries are the learned latents, the same for every input, so
        a key's score does not depend on the other keys: masking all but one slice's tokens gives
        exactly the full attention's mass in that slice, renormalised over it. A slice where a
        sensor has no tokens counts 0 for it."""
        if self.late is not None:
            raise ValueError("attention_over_time: the late-fusion baseline has no attention (fuse='late')")
        tokens, masks, positions = self.encode(sensors)
        edges = torch.linspace(-1, 1, bins + 1)
        out = []
        for b in range(bins):
            lo, hi = edges[b], edges[b + 1]
            inside = {n: masks[n] & (positions[n][..., 0] >= lo) & ((positions[n][..., 0] < hi) | (b == bins - 1))
                      for n in masks}
            _, shares = self.perceiver(tokens, mask=inside, positions=positions, return_attention=True)
            out.append(torch.stack([shares[n].mean(-1) for n in self.perceiver.names if n in shares], -1))
        return torch.stack(out, 1)

    # ------------------------------------------------------------------------------ save / load

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight: the encoders are trained with the model (no frozen backbone)."""
        return self.state_dict()

    def save_pretrained(self, save_directory: str | os.PathLike, *, state_dict: dict | None = None):
        """config.json + model.safetensors of every weight (`state_dict`: the trainer's gathered copy)."""
        config = {"family": self.family, **dataclasses.asdict(self.config)}
        tensors = state_dict if state_dict is not None else self.state_dict()
        return save_checkpoint(save_directory, config, {k: v.detach() for k, v in tensors.items()})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides) -> "FusionModel":
        values, tensors = load_checkpoint(directory)
        if values.pop("family", None) != cls.family:
            raise ValueError(f"{directory}: not a fusion checkpoint")
        fixed = sorted(set(overrides) - {"chunk_size"})
        if fixed:
            raise ValueError(f"from_pretrained: {fixed} would change the trained weights; only chunk_size may be "
                             "overridden")
        model = cls(FusionConfig.from_dict({**values, **overrides}))
        load_into(model, tensors, list(model.state_dict()), str(directory))
        return model
