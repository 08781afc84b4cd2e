"""The model a run trains: the frozen backbones loaded through `from_pretrained` (`model.lm`,
`model.vision`: local directories or the embedded backbones), wrapped by `model.family`'s class;
a saved model's weights to start from (`model.init_from`).
"""

from __future__ import annotations

import transformers
from torch import nn

from .. import backbones
from ..data.world.tasks import question_words
from ..encoders import load_vision_encoder
from ..lm.adapters import find_decoder_layers
from ..models.flamingo import FlamingoModel
from ..models.fusion import FusionModel
from ..models.io import check_fits
from ..models.registry import FAMILIES, get_family
from .loop import hf_progress
from .settings import DataConfig, ModelConfig


def build_model(cfg: ModelConfig, *, progress: bool = True) -> tuple[nn.Module, object]:
    """Load the frozen backbones through from_pretrained and wrap them in model.family's class
    (trainable parts seeded); `progress`: transformers' loading bars."""
    with hf_progress(progress):
        return _build_model(cfg)


def _build_model(cfg: ModelConfig) -> tuple[nn.Module, object]:
    family = get_family(cfg.family)
    if cfg.on_world():
        return build_fusion(cfg)
    if not hasattr(family.model_class, "from_lm"):  # a family without backbones: built from its config
        return family.model_class(cfg.family_config()), None
    lm_dir, vision_dir = backbones.resolve(cfg.lm, cfg.vision)
    tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.tokenizer or lm_dir)
    lm = load_lm(lm_dir, family)
    vision = load_vision_encoder(vision_dir)
    return family.model_class.from_lm(lm, vision, tokenizer=tokenizer, config=cfg.family_config()), tokenizer


def load_lm(lm_dir: str, family) -> nn.Module:
    """The LM of `lm_dir` through from_pretrained: a causal LM, or an encoder-decoder for a
    family (registry entry) whose class takes one (PaLI)."""
    config = transformers.AutoConfig.from_pretrained(lm_dir)
    if getattr(config, "is_encoder_decoder", False):
        if not getattr(family.model_class, "accepts_encoder_decoder", False):
            takers = [f.name for f in FAMILIES.values() if getattr(f.model_class, "accepts_encoder_decoder", False)]
            raise ValueError(f"model.lm: {lm_dir} is an encoder-decoder ({config.model_type}); model.family="
                             f"{family.name} needs a causal LM ({', '.join(takers)} take either)")
        return transformers.AutoModelForSeq2SeqLM.from_pretrained(lm_dir)
    return transformers.AutoModelForCausalLM.from_pretrained(lm_dir)


def build_fusion(cfg: ModelConfig) -> tuple[FusionModel, object]:
    """The fusion model: its encoders built from model.fusion, and with model.fusion.lm the frozen
    LM loaded through from_pretrained, its tokenizer taught the touch world's question words."""
    from ..data.tokenizer import add_missing_words

    if cfg.fusion.lm is None:
        return FusionModel(cfg.fusion), None
    lm_dir, _ = backbones.resolve(cfg.fusion.lm)
    tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.tokenizer or lm_dir)
    add_missing_words(tokenizer, question_words())
    lm = transformers.AutoModelForCausalLM.from_pretrained(lm_dir)
    return FusionModel(cfg.fusion, lm=lm, tokenizer=tokenizer), tokenizer


def transformer_blocks(model: nn.Module, family_config) -> list[nn.Module]:
    """The LM's layers: the units of FSDP2 sharding and activation checkpointing (a family with
    more than one stack, PaLI's encoder-decoder, says which)."""
    if hasattr(model, "transformer_blocks"):
        return model.transformer_blocks()
    return list(find_decoder_layers(model.lm, family_config.decoder_layers_attr)[1])


def init_from(model: nn.Module, directory: str) -> list[str]:
    """Start `model`'s trainable weights from a saved model's; returns the names that start fresh."""
    from ..models.io import load_checkpoint

    values, tensors = load_checkpoint(directory)
    own = model.trainable_state_dict()
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise ValueError(f"model.init_from: {directory} holds weights this model has not ({extra[:5]}); "
                         "is it built with the same family options?")
    check_fits({k: own[k].shape for k in tensors}, tensors, f"model.init_from {directory}")
    recorded = values.get("lm", {}).get("fingerprint")
    if recorded and recorded != model.config.lm.get("fingerprint"):
        raise ValueError(f"model.init_from: {directory} was trained on another language model "
                         f"({values['lm'].get('name_or_path')!r}) than model.lm")
    model.load_state_dict(tensors, strict=False)
    return sorted(set(own) - set(tensors))


def check_image_size(data: DataConfig, model: FlamingoModel, vision: str) -> None:
    """data.image_size must be the size the vision encoder was configured for (a Hugging Face
    encoder's `image_size`; an encoder without one is not checked): else the first batch fails
    inside the encoder, or position embeddings meet a grid they were not trained on."""
    config = getattr(getattr(getattr(model, "vision_encoder", None), "model", None), "config", None)
    config = getattr(config, "vision_config", config)  # a dual-tower config holds its tower's
    size = getattr(config, "image_size", None)
    if isinstance(size, int) and size != data.image_size:
        raise ValueError(f"data.image_size: {data.image_size}, but the vision encoder (model.vision={vision!r}) "
                         f"takes {size}-pixel images; set data.image_size={size}")
