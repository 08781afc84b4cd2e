"""The one encoder protocol: every sensor encoder maps its input to tokens plus a mask, and a
sensor encoder also to each token's time.

    encoder(x) -> EncoderOutput(tokens [N, S, D], mask [N, S] or None, times [N, S] or None,
                                duration or None)
    encoder.dim -> D

`times` are seconds from the start of the window, from the stream's own rate and how the encoder
groups samples into tokens, never from which samples are real: a dropped frame moves no other
token, and a window cut short keeps the times of the tokens it keeps. `duration` is the seconds
the input covers (T / sample_rate). `check_rate` refuses a stream declared at a rate other than
the encoder's; a plain tensor declares none and is taken to be at the encoder's rate.

`as_encoder` adapts what users bring: a multisense encoder, a Hugging Face vision model
(its `last_hidden_state` are the tokens, or the hidden states of a chosen layer with the class
token dropped, as LLaVA reads CLIP), or any module that returns a [N, S, D] tensor.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import nn

from ..nn.checks import check_shape


class EncoderOutput(NamedTuple):
    tokens: torch.Tensor  # [N, S, D]
    mask: torch.Tensor | None = None  # [N, S] bool, True = real token
    times: torch.Tensor | None = None  # [N, S] float seconds from the window's start
    duration: float | None = None  # seconds the input stream covers


def check_rate(encoder: nn.Module, sample_rate: float | None) -> None:
    """Refuse a stream declared at `sample_rate` (Hz) other than the encoder's own: its filters,
    strides and token times are built for that rate, and would read a faster stream as a slower,
    longer one without complaint. None: the stream is taken to be at the encoder's rate."""
    if sample_rate is None:
        return
    declared = float(encoder.sample_rate)
    try:
        given = float(sample_rate)
    except (TypeError, ValueError):
        raise ValueError(f"sample_rate: expected the stream's rate in Hz, got {sample_rate!r}") from None
    if abs(given - declared) > 1e-6 * declared:
        raise ValueError(f"sample_rate: a {given:g} Hz stream, but the {encoder.name} encoder takes {declared:g} Hz; "
                         f"resample it to {declared:g} Hz first")


def sample_times(count: int, rate: float, *, step: int = 1, offset: float = 0.0,
                 device: torch.device | None = None) -> torch.Tensor:
    """[count] seconds of token j = sample (j * step + offset) of a stream at `rate` Hz."""
    return (torch.arange(count, device=device, dtype=torch.float32) * step + offset) / rate


class HFEncoder(nn.Module):
    """A Hugging Face vision model (CLIP, SigLIP, ViT, DINOv2...) whose tokens [N, S, D] are its
    `last_hidden_state` (feature_layer=None), or `hidden_states[feature_layer]` (an int, or a list
    of ints whose states are concatenated along D, as Hugging Face's LLaVA does), with the first
    token (the class token) dropped when `drop_class_token`."""

    def __init__(self, model: nn.Module, *, feature_layer: int | list[int] | None = None,
                 drop_class_token: bool = False):
        super().__init__()
        self.model = model
        cfg = model.config
        width = getattr(cfg, "hidden_size", None) or cfg.vision_config.hidden_size
        self.feature_layer, self.drop_class_token = feature_layer, drop_class_token
        self.dim = width * (len(feature_layer) if isinstance(feature_layer, (list, tuple)) else 1)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        if self.feature_layer is None:
            tokens = self.model(pixel_values=x).last_hidden_state
        else:
            states = self.model(pixel_values=x, output_hidden_states=True).hidden_states
            layers = self.feature_layer if isinstance(self.feature_layer, (list, tuple)) else [self.feature_layer]
            tokens = torch.cat([states[i] for i in layers], dim=-1)
        return EncoderOutput(tokens[:, 1:] if self.drop_class_token else tokens)


class ModuleEncoder(nn.Module):
    """Any module returning tokens [N, S, D] (or an EncoderOutput); `dim` must be given or be an attribute."""

    def __init__(self, module: nn.Module, dim: int):
        super().__init__()
        self.module = module
        self.dim = dim

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        out = self.module(x)
        return out if isinstance(out, EncoderOutput) else EncoderOutput(out)


def as_encoder(module: nn.Module, dim: int | None = None, **hf_options) -> nn.Module:
    """Wrap `module` so that it follows the encoder protocol. `hf_options` (feature_layer,
    drop_class_token) choose a Hugging Face model's tokens; an encoder already wrapped is
    re-wrapped around its model when they differ from its own."""
    if isinstance(module, HFEncoder):
        if not hf_options or all(getattr(module, k) == v for k, v in hf_options.items()):
            return module
        module = module.model
    if isinstance(module, ModuleEncoder):
        if hf_options:
            raise ValueError(f"vision_encoder: {sorted(hf_options)} choose a Hugging Face model's hidden states; "
                             f"this encoder is a {type(module.module).__name__}")
        return module
    if hasattr(module, "vision_model") and hasattr(module, "text_model"):  # CLIPModel, SiglipModel: both towers
        raise ValueError(f"vision_encoder: a dual-tower {type(module).__name__}; pass its vision tower (its "
                         "`.vision_model`, or e.g. CLIPVisionModel.from_pretrained(directory))")
    if hasattr(module, "config") and hasattr(module, "base_model_prefix"):  # a transformers PreTrainedModel
        return HFEncoder(module, **hf_options)
    dim = dim or getattr(module, "dim", None)
    if dim is None:
        raise ValueError("vision_encoder: cannot tell its output width; give it a `dim` attribute or pass "
                         "dim_media=... explicitly")
    return ModuleEncoder(module, dim)


# Dual-tower checkpoints (image + text) whose image tower alone is the encoder.
_VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}


def load_vision_encoder(path, cls=None, **options) -> nn.Module:
    """A Hugging Face vision encoder from a local directory, as `cls.from_pretrained(path,
    **options)` (default: the image tower of a CLIP/SigLIP checkpoint of both towers, as
    `CLIPVisionModel` loads it, else `AutoModel`)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    tower = _VISION_TOWERS.get(config.model_type)
    if cls is None:
        cls = getattr(transformers, tower) if tower else transformers.AutoModel
    if tower is None:
        return cls.from_pretrained(path, **options)
    # The text tower's weights are left out on purpose: silence the load report listing them.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return cls.from_pretrained(path, **options)
    finally:
        transformers.logging.set_verbosity(verbosity)


# ---------------------------------------------------------------------------------- media input
# What every family does with pixel input [B, M, F, C, H, W] (an image is one frame), shared.


def check_frame_mask(media: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor | None:
    """frame_mask [B, M, F] against the media's first three dims, before anything reads it."""
    if frame_mask is None:
        return None
    if media.ndim >= 3:
        B, M, F = media.shape[:3]
        check_shape("frame_mask", frame_mask, "B M F", B=B, M=M, F=F)
    frame_mask = frame_mask.bool()
    if not frame_mask.any():
        raise ValueError("frame_mask: no frame is marked present; pass no media instead of only padding")
    return frame_mask


def encode_frames(encoder: nn.Module, pixel_values: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, M, F, C, H, W] -> [B, M, F, S, Dv]; frames that the mask marks missing are not encoded
    (their tokens are zeros). `encoder` follows the protocol or returns the tokens themselves."""
    B, M, F = pixel_values.shape[:3]
    frames = pixel_values.flatten(0, 2)
    keep = frame_mask.flatten().nonzero().squeeze(1) if frame_mask is not None else None
    trainable = any(p.requires_grad for p in encoder.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
        out = encoder(frames if keep is None else frames.index_select(0, keep))
        tokens = out.tokens if isinstance(out, EncoderOutput) else out  # a bare module's [N, S, D]
    if keep is not None:
        tokens = tokens.new_zeros(B * M * F, *tokens.shape[1:]).index_copy(0, keep, tokens)
    return tokens.view(B, M, F, *tokens.shape[1:])


def check_pixels(encoder: nn.Module | None, pixel_values: torch.Tensor) -> None:
    """What a vision tower would fail on deep inside, or take silently, named at the door: the
    shape, an empty batch of frames, integer pixels, a size the tower was not built for, and
    values in [0, 255] where it expects normalised ones (its image processor's output)."""
    check_shape("pixel_values", pixel_values, "B M F C H W")
    if encoder is None:
        raise ValueError("pixel_values: this model has no vision_encoder; pass media_features instead")
    if pixel_values.numel() == 0:
        raise ValueError(f"pixel_values: no frames to encode (shape {list(pixel_values.shape)}); for a text-only "
                         "batch pass no pixel_values")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values: {pixel_values.dtype} pixels; the encoder takes float pixels normalised as "
                         "its image processor makes them (e.g. x.float() / 255, then its mean and std)")
    config = getattr(getattr(encoder, "model", None), "config", None)
    size = getattr(config, "image_size", None)
    if isinstance(size, int) and tuple(pixel_values.shape[-2:]) != (size, size):
        raise ValueError(f"pixel_values: frames of {list(pixel_values.shape[-2:])} pixels; this vision encoder was "
                         f"built for {size}x{size} (resize them, as its image processor does)")
    if pixel_values.abs().amax() > 32:  # normalised pixels sit within a few units of zero
        warnings.warn(f"pixel_values: values up to {float(pixel_values.abs().amax()):g}; the encoder expects "
                      "normalised pixels (its image processor's output), not [0, 255]", stacklevel=3)


def media_tokens(encoder: nn.Module | None, pixel_values: torch.Tensor | None, media_features: torch.Tensor | None,
                 frame_mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """The frozen encoder's tokens [B, M, F, S, Dv] of either input (pixels, or features already
    encoded), checked: shape, and no NaN or inf."""
    if (pixel_values is None) == (media_features is None):
        raise ValueError("pass exactly one of pixel_values and media_features")
    if pixel_values is not None:
        check_pixels(encoder, pixel_values)
        feats = encode_frames(encoder, pixel_values, frame_mask)
    else:
        check_shape("media_features", media_features, "B M F S Dv", Dv=dim)
        feats = media_features
    if not torch.isfinite(feats).all():
        raise ValueError("pixel_values/media_features: contain NaN or inf")
    return feats


@torch.no_grad()
def media_statistics(tokens_of, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std [Dv] of an encoder's tokens over `batches` (dicts holding
    `pixel_values` [B, M, F, C, H, W] or `media_features` [B, M, F, S, Dv], and optionally
    `frame_mask` [B, M, F], as `collate` makes them); only real frames count. `tokens_of(pixels,
    features, frame_mask)` -> [B, M, F, S, Dv] is the family's `media_tokens`. What a family's
    `standardize_media` measures once, before training: encoder features often share a large
    offset across images, which trains slowly (measured: docs/history.md). A channel (nearly)
    constant on the calibration media gets a floor on its std, so it is centred, not blown up."""
    count, total, squares = 0, 0.0, 0.0
    for batch in batches:
        mask = batch.get("frame_mask")
        feats = tokens_of(batch.get("pixel_values"), batch.get("media_features"), mask)
        tokens = feats[mask.bool()] if mask is not None else feats.flatten(0, 2)  # [N, S, Dv]
        tokens = tokens.flatten(0, 1).double()
        count += tokens.shape[0]
        total = total + tokens.sum(0)
        squares = squares + tokens.square().sum(0)
    if count < 2:
        raise ValueError("calibrate_media: batches held fewer than 2 media tokens")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean, std.clamp_min(max(1e-3 * float(std.mean()), 1e-12))


class MediaStandardization:
    """A family's `standardize_media` (FlamingoModel, PaLIModel): the encoder's features less
    their per-channel mean, over their std, both measured once on training media
    (`calibrate_media`) and saved with the trainable weights; the identity until then. The
    family sets `config.standardize_media` and has `media_tokens(pixels, features, frame_mask)`."""

    def _init_standardization(self, dim_media: int) -> None:
        if self.config.standardize_media:
            self.register_buffer("media_mean", torch.zeros(dim_media))
            self.register_buffer("media_std", torch.ones(dim_media))

    def standardize(self, feats: torch.Tensor) -> torch.Tensor:
        """[..., Dv] -> [..., Dv], standardised if the model was built with standardize_media."""
        if not self.config.standardize_media:
            return feats
        return (feats - self.media_mean.to(feats.dtype)) / self.media_std.to(feats.dtype)

    @torch.no_grad()
    def calibrate_media(self, batches):
        """Measure the per-channel mean and std of the encoder's features (`media_statistics`).

        `batches`: an iterable of dicts holding `pixel_values` [B, M, F, C, H, W] or
        `media_features` [B, M, F, S, Dv], and optionally `frame_mask` [B, M, F] (as `collate`
        makes them); only real frames count. Done once, before training."""
        if not self.config.standardize_media:
            raise ValueError("calibrate_media: this model was built with standardize_media=False")
        mean, std = media_statistics(self.media_tokens, batches)
        self.media_mean.copy_(mean)
        self.media_std.copy_(std)
        return self
