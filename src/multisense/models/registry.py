"""The model families and the one way to load any of them.

Every family (flamingo, llava, fusion, pali) is a
model class with a config dataclass, registered here under its name. The class provides what
training, evaluation and save/load need and nothing family-specific leaks into them:

    Model.from_lm(lm, vision_encoder, tokenizer=..., config=Config)   build over frozen backbones
    model(input_ids, attention_mask, pixel_values, frame_mask, ...)   HF-style output with logits
    model.reads_labels                 its forward takes the labels (a decoder's input, a prefix-LM's mask)
    model.shift_labels                 causal LMs predict the next token (an encoder-decoder: False)
    Model.align_labels(out, labels)    the batch's labels laid out like out.logits
                                       (all three: models.scoring, the one path of training and eval)
    model.context_tokens(input_ids, attention_mask, frame_mask)   [B] LM context each sample takes
    Model.trains_on_samples            optional: True for prompt -> answer families (PaLI), which
                                       train on a task's episodes, not interleaved documents
    model.generate(...), model.encode_frames(...), model.lm
    model.trainable_state_dict(), save_pretrained(dir), Model.from_pretrained(dir)

A saved model's config.json names its family (`"family": "llava"`); `AutoModel.from_pretrained`
reads it and hands the directory to that family's class, as transformers' Auto classes do.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .flamingo import FlamingoConfig, FlamingoModel
from .fusion import FusionConfig, FusionModel
from .io import CONFIG_NAME
from .llava import LlavaConfig, LlavaModel
from .pali import PaLIConfig, PaLIModel


@dataclass(frozen=True)
class Family:
    name: str
    model_class: type
    config_class: type
    # what the family cannot do of the common contract (tests/models/test_conformance.py), each
    # with the reason its error gives: the suite checks that it refuses cleanly
    limits: dict[str, str] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register_family(name: str, model_class: type, config_class: type, *, limits: dict[str, str] | None = None) -> Family:
    if name in FAMILIES and FAMILIES[name].model_class is not model_class:
        raise ValueError(f"family {name!r}: already registered to {FAMILIES[name].model_class.__name__}")
    FAMILIES[name] = Family(name, model_class, config_class, dict(limits or {}))
    return FAMILIES[name]


def get_family(name: str, where: str = "model.family") -> Family:
    if name not in FAMILIES:
        near = difflib.get_close_matches(str(name), FAMILIES, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"{where}: unknown family {name!r} (registered: {sorted(FAMILIES)}){hint}")
    return FAMILIES[name]


def family_of(directory: str | os.PathLike) -> str:
    """The family a save_pretrained directory's config.json names (checkpoints from before the
    registry named it `architecture`)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG_NAME}; expected a directory written by save_pretrained")
    config = json.loads(path.read_text())
    name = config.get("family", config.get("architecture"))
    if name is None:
        raise ValueError(f"{path}: names no family; is it a multisense checkpoint (not a Hugging Face model)?")
    return name


class AutoModel:
    """`AutoModel.from_pretrained(dir, **kwargs)`: the registered class of the family the
    checkpoint names, loaded with `kwargs` (lm=, vision_encoder=, check_backbones=, overrides)."""

    def __init__(self):
        raise TypeError("AutoModel is not instantiated; use AutoModel.from_pretrained(directory)")

    @staticmethod
    def from_pretrained(directory: str | os.PathLike, **kwargs):
        family = get_family(family_of(directory), where=f"{directory}: family")
        return family.model_class.from_pretrained(directory, **kwargs)


register_family("flamingo", FlamingoModel, FlamingoConfig)
register_family("llava", LlavaModel, LlavaConfig)
register_family("fusion", FusionModel, FusionConfig)
register_family("pali", PaLIModel, PaLIConfig, limits={
    "continue_cache": "generate encodes the prompt anew each call; pass the whole history"})
