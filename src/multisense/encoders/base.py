"""The one encoder protocol: every sensor encoder maps its input to tokens plus a mask.

    encoder(x) -> EncoderOutput(tokens [N, S, D], mask [N, S] or None)
    encoder.dim -> D

`as_encoder` adapts what users bring: a multisense encoder, a Hugging Face vision model
(its `last_hidden_state` are the tokens), or any module that returns a [N, S, D] tensor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class EncoderOutput(NamedTuple):
    tokens: torch.Tensor  # [N, S, D]
    mask: torch.Tensor | None = None  # [N, S] bool, True = real token


class HFEncoder(nn.Module):
    """A Hugging Face model whose `last_hidden_state` [N, S, D] are the tokens (CLIP, SigLIP, ViT, DINOv2...)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        cfg = model.config
        self.dim = getattr(cfg, "hidden_size", None) or cfg.vision_config.hidden_size

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        return EncoderOutput(self.model(pixel_values=x).last_hidden_state)


class ModuleEncoder(nn.Module):
    """Any module returning tokens [N, S, D] (or an EncoderOutput); `dim` must be given or be an attribute."""

    def __init__(self, module: nn.Module, dim: int):
        super().__init__()
        self.module = module
        self.dim = dim

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        out = self.module(x)
        return out if isinstance(out, EncoderOutput) else EncoderOutput(out)


def as_encoder(module: nn.Module, dim: int | None = None) -> nn.Module:
    """Wrap `module` so that it follows the encoder protocol."""
    if isinstance(module, (HFEncoder, ModuleEncoder)):
        return module
    if hasattr(module, "config") and hasattr(module, "base_model_prefix"):  # a transformers PreTrainedModel
        return HFEncoder(module)
    dim = dim or getattr(module, "dim", None)
    if dim is None:
        raise ValueError("vision_encoder: cannot tell its output width; give it a `dim` attribute or pass "
                         "dim_media=... explicitly")
    return ModuleEncoder(module, dim)


# Dual-tower checkpoints (image + text) whose image tower alone is the encoder.
_VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}


def load_vision_encoder(path, cls=None) -> nn.Module:
    """A Hugging Face vision encoder from a local directory, as `cls.from_pretrained` (default:
    the image tower of a CLIP/SigLIP checkpoint of both towers, as `CLIPVisionModel` loads it,
    else `AutoModel`)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    tower = _VISION_TOWERS.get(config.model_type)
    if cls is None:
        cls = getattr(transformers, tower) if tower else transformers.AutoModel
    if tower is None:
        return cls.from_pretrained(path)
    # The text tower's weights are left out on purpose: silence the load report listing them.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return cls.from_pretrained(path)
    finally:
        transformers.logging.set_verbosity(verbosity)
