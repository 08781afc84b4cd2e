"""LLaVA (Liu et al. 2023; LLaVA-1.5, Liu et al. 2024): the projector baseline, over any Hugging
Face causal LM.

A frozen vision encoder's tokens of a chosen layer (default: the penultimate, class token
dropped) are projected to the LM's width (`nn.Projector`: Linear-GELU-Linear) and spliced into
the LM's input embeddings where the media markers were: each marker becomes its item's tokens
(`nn.splice.expand_markers`, frames x tokens per frame), so an image costs the LM its full token
count in context, at every layer. This is what Flamingo's resampler and cross-attention avoid,
and what `multisense compare` measures.

Training stages, as in LLaVA: the projector alone (LM and encoder frozen), then optionally LoRA
on the LM (`lora_rank > 0`, through `peft`); the LoRA weights are saved with the projector's.

Input convention, shared with every family: one marker token per media item in `input_ids`
(the data path's collator), `pixel_values` [B, M, F, C, H, W], `frame_mask` [B, M, F]. Hugging
Face's `LlavaForConditionalGeneration` takes markers already repeated; `from_hf_llava` and
`to_hf_llava` convert a model (not its inputs) between the two.

Shape letters: B batch, L text length, M media items, F frames, N tokens per frame, Dv vision
width, D LM width, E expanded length.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import DynamicCache

from ..config import FamilyConfig, check_choice, check_number
from ..lm.adapters import cache_argument
from ..nn import Projector
from ..nn.projector import PROJECTORS
from .conventions import ModelConventions, check_text_inputs, generation_options
from .io import (
    attach_identities,
    load_backbones,
    load_into,
    local_path,
    read_checkpoint,
    save_checkpoint,
    saved_tokenizer,
)
from .spliced_media import SELECT_STRATEGIES, SplicedMedia, measure_tokens


@dataclass
class LlavaConfig(FamilyConfig):
    """Everything that shapes a LlavaModel apart from its two frozen backbones."""

    media_token_id: int | None = None
    projector: str = "mlp2x_gelu"  # or "linear"
    projector_bias: bool = True
    vision_feature_layer: int | list[int] = -2  # hidden_states index (a list: concatenated)
    vision_feature_select_strategy: str = "default"  # "default": class token dropped, "full": kept
    tokens_per_frame: int | None = None  # measured by from_lm when the encoder says its image size
    # the budget, in LM tokens per sequence (cache included); None: the LM's max_position_embeddings
    max_length: int | None = None
    lora_rank: int = 0  # 0: the projector alone trains (stage 1); > 0: LoRA on the LM too (stage 2)
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str | None = None  # None: peft's default for the LM's model type
    decoder_layers_attr: str | None = None  # where the LM keeps its decoder layers (FSDP2 units, checkpointing)
    dim_media: int | None = None
    lm: dict = field(default_factory=dict)  # identity of the frozen LM (filled by from_lm)
    vision: dict = field(default_factory=dict)  # identity of the frozen vision encoder

    def validate(self, where: str = "") -> None:
        check_choice(self.projector, PROJECTORS, f"{where}projector")
        check_choice(self.vision_feature_select_strategy, SELECT_STRATEGIES, f"{where}vision_feature_select_strategy")
        check_number(self.lora_rank, f"{where}lora_rank", at_least=0)
        check_number(self.lora_dropout, f"{where}lora_dropout", at_least=0, below=1)
        if self.max_length is not None:
            self.check_positive(where, "max_length")


class LlavaCache(DynamicCache):
    """The LM's KV cache plus the token layout it holds: `tokens` [B, E] and `mask` [B, E] (the
    expanded sequence the LM saw), and `history` [B, T], the same tokens as the caller wrote
    them (one marker per media item). A later `generate` gets the whole history again and
    continues after `history`; `forward` gets only the new tokens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.history: torch.Tensor | None = None
        self.refusal: str | None = None  # why this cache cannot be continued, if it cannot

    def layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(tokens, mask, history) of what is cached, None for an empty cache; checked."""
        if self.get_seq_length() == 0:
            return None
        if self.refusal:
            raise ValueError(f"past_key_values: {self.refusal}")
        if self.tokens is None or self.tokens.shape[1] != self.get_seq_length():
            raise ValueError(f"past_key_values: the cache holds {self.get_seq_length()} tokens, but LlavaModel laid "
                             f"out {0 if self.tokens is None else self.tokens.shape[1]}; it was changed outside "
                             "LlavaModel (cropped, or filled by the language model alone)")
        return self.tokens, self.mask, self.history

    def record(self, tokens, mask, history) -> None:
        self.tokens, self.mask, self.history = tokens, mask, history


def _pop_cache(kwargs: dict) -> LlavaCache | None:
    given = {k: kwargs.pop(k) for k in ("past_key_values", "cache") if kwargs.get(k) is not None}
    if len(given) > 1:
        raise ValueError("pass the cache as past_key_values or as cache, not both")
    cache = next(iter(given.values()), None)
    if cache is not None and not isinstance(cache, LlavaCache):
        raise ValueError(f"past_key_values: expected a multisense.models.llava.LlavaCache (it keeps the expanded "
                         f"token layout beside the LM's cache), got {type(cache).__name__}")
    return cache


class LlavaModel(ModelConventions, SplicedMedia, nn.Module):
    """A frozen HF causal LM and vision encoder, joined by a trainable projector (and LoRA)."""

    shift_labels = True  # a causal LM: the logits at t predict the label at t + 1
    reads_labels = False  # the loss is the loop's, from the logits (models.scoring)

    def __init__(self, lm: nn.Module, vision_encoder: nn.Module | None, config: LlavaConfig):
        super().__init__()
        if config.media_token_id is None:
            raise ValueError("media_token_id: required (or pass tokenizer= to from_lm to add an <image> token)")
        if config.vision_feature_select_strategy not in SELECT_STRATEGIES:
            raise ValueError(f"vision_feature_select_strategy: expected one of {SELECT_STRATEGIES}, "
                             f"got {config.vision_feature_select_strategy!r}")
        self.config = config
        self.lm = lm
        self.tokenizer = None
        dim_media = self._attach_vision(vision_encoder, config)
        for p in self.lm.parameters():
            p.requires_grad_(False)
        if self.vision_encoder is not None:
            for p in self.vision_encoder.parameters():
                p.requires_grad_(False)
            if config.tokens_per_frame is None:
                config.tokens_per_frame = measure_tokens(self.vision_encoder)
        dim = lm.get_input_embeddings().embedding_dim
        self.projector = Projector(dim_media, dim, kind=config.projector, bias=config.projector_bias)
        if config.lora_rank > 0:
            _add_lora(lm, config)
        self._position_ids = "position_ids" in inspect.signature(lm.forward).parameters
        self._cache_argument = cache_argument(lm)  # the name transformers takes it under (renamed in 5.24)
        self._pending: dict | None = None  # one generate call's projected media, for the pre-hook
        self._hooks = [lm.register_forward_pre_hook(self._before_lm, with_kwargs=True)]
        self.lm.eval()
        if self.vision_encoder is not None:
            self.vision_encoder.eval()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_lm(cls, lm: nn.Module, vision_encoder: nn.Module | None = None, *, tokenizer=None,
                media_token_id: int | None = None, config: LlavaConfig | None = None, **overrides) -> "LlavaModel":
        """Wrap any HF causal LM. Keywords are LlavaConfig fields (projector="linear", lora_rank=8, ...).

        With a `tokenizer` and no `media_token_id`, an `<image>` special token is added to it;
        the tokenizer is kept and saved by `save_pretrained`.
        """
        config = (config or LlavaConfig()).replace(**overrides)
        vision_encoder = attach_identities(config, lm, vision_encoder, tokenizer=tokenizer,
                                           media_token_id=media_token_id)
        model = cls(lm, vision_encoder, config)
        model.tokenizer = tokenizer
        return model

    @classmethod
    def from_hf_llava(cls, dir_or_model, **overrides) -> "LlavaModel":
        """Import a Hugging Face `LlavaForConditionalGeneration` (a local directory or the model):
        its vision tower, projector, language model (as the causal LM its text config names),
        `image_token_id`, `vision_feature_layer` and `vision_feature_select_strategy`. The
        result computes the same logits on the same (expanded) sequence."""
        hf = dir_or_model
        if not isinstance(hf, nn.Module):
            if not Path(dir_or_model).is_dir():
                raise FileNotFoundError(f"dir_or_model: expected a local directory or a LlavaForConditionalGeneration, "
                                        f"got {dir_or_model!r}")
            hf = transformers.LlavaForConditionalGeneration.from_pretrained(dir_or_model)
        if not isinstance(hf, transformers.LlavaForConditionalGeneration):
            raise ValueError(f"dir_or_model: expected a LlavaForConditionalGeneration, got {type(hf).__name__}")
        c = hf.config
        if c.projector_hidden_act != "gelu":
            raise ValueError(f"projector_hidden_act: {c.projector_hidden_act!r}; LlavaModel's projector is "
                             "mlp2x_gelu (exact GELU)")
        lm = transformers.AutoModelForCausalLM.from_config(c.text_config).to(hf.dtype)
        lm.base_model.load_state_dict(hf.model.language_model.state_dict())
        lm.get_output_embeddings().load_state_dict(hf.lm_head.state_dict())
        lm.generation_config = hf.generation_config
        layer = c.vision_feature_layer
        config = LlavaConfig(media_token_id=c.image_token_id, projector="mlp2x_gelu",
                             projector_bias=c.multimodal_projector_bias,
                             vision_feature_layer=list(layer) if isinstance(layer, (list, tuple)) else layer,
                             vision_feature_select_strategy=c.vision_feature_select_strategy).replace(**overrides)
        model = cls.from_lm(lm, hf.model.vision_tower, config=config)
        _copy_projector(hf.model.multi_modal_projector, model.projector, to_hf=False)
        source = getattr(hf.config, "_name_or_path", "")
        if source and Path(source).is_dir():  # both backbones live in that directory: record it for both
            for identity in (model.config.lm, model.config.vision):
                identity.update(name_or_path=local_path(source), hf_llava=True)
            if any((Path(source) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
                model.tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        return model

    def to_hf_llava(self) -> "transformers.LlavaForConditionalGeneration":
        """This model as Hugging Face's `LlavaForConditionalGeneration` (weights copied), whose
        processor would repeat each `<image>` `tokens_per_frame` times."""
        c = self.config
        hf_vision = getattr(self.vision_encoder, "model", None)
        problems = [text for bad, text in (
            (hf_vision is None, "the vision encoder is not a Hugging Face model"),
            (c.projector != "mlp2x_gelu", f"projector={c.projector!r} (Hugging Face's is mlp2x_gelu)"),
            (c.lora_rank > 0, "the LM carries LoRA adapters (merge them first)"),
            (c.media_token_id >= self.lm.get_input_embeddings().num_embeddings,
             f"media_token_id {c.media_token_id} is outside the LM's vocabulary (Hugging Face's LLaVA embeds its "
             "image token; resize the LM's embeddings before from_lm)"))
            if bad]
        if problems:
            raise ValueError("to_hf_llava: " + "; ".join(problems))
        config = transformers.LlavaConfig(
            vision_config=hf_vision.config.to_dict(), text_config=self.lm.config.to_dict(),
            image_token_id=c.media_token_id, projector_hidden_act="gelu", multimodal_projector_bias=c.projector_bias,
            vision_feature_layer=c.vision_feature_layer, vision_feature_select_strategy=c.vision_feature_select_strategy,
            image_seq_length=c.tokens_per_frame)
        hf = transformers.LlavaForConditionalGeneration(config).to(self.lm.dtype).eval()
        hf.model.vision_tower.load_state_dict(hf_vision.state_dict())
        hf.model.language_model.load_state_dict(self.lm.base_model.state_dict())
        hf.lm_head.load_state_dict(self.lm.get_output_embeddings().state_dict())
        _copy_projector(hf.model.multi_modal_projector, self.projector, to_hf=True)
        return hf

    # ------------------------------------------------------------------ public API

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                frame_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **lm_kwargs):
        """The LM's usual output on the expanded sequence (loss when labels are given, logits
        [B, E, V], past_key_values), plus `label_positions` [B, L]: the column of the logits
        each input token's label belongs to (-1 for markers, padding and tokens the budget
        dropped), and `labels` [B, E] expanded when labels were given.

        With a cache (`past_key_values=`, a LlavaCache), `input_ids` are the new tokens only and
        `attention_mask`, if given, covers the cached tokens and the new ones, as for the LM.
        """
        check_text_inputs(input_ids, attention_mask, labels, return_dict=lm_kwargs.get("return_dict"))
        cache = _pop_cache(lm_kwargs)
        use_cache = lm_kwargs.pop("use_cache", None)
        if use_cache is None:
            use_cache = cache is not None or (not self.training and getattr(self.lm.config, "use_cache", True))
        if use_cache and cache is None:
            cache = LlavaCache(config=self.lm.config)
        layout = cache.layout() if cache is not None else None
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError("input_ids: required, a [B, L] tensor; the media markers locate the media")
        if attention_mask is not None and layout is not None:
            attention_mask = attention_mask[:, layout[2].shape[1]:]  # the new tokens' part
        projected, frame_mask = self.encode_media(pixel_values, media_features, frame_mask)
        self.check_rows(input_ids, frame_mask)
        past = layout[1].sum(-1) if layout is not None else None
        exp = self.expand(input_ids, attention_mask, labels, frame_mask, align="left", past=past)
        embeds = self.embed(exp.input_ids, self.kept_features(projected, frame_mask, exp.kept))
        mask = exp.attention_mask if layout is None else torch.cat((layout[1], exp.attention_mask), 1)
        if self._position_ids:
            lm_kwargs["position_ids"] = exp.position_ids
        if cache is not None:
            lm_kwargs[self._cache_argument] = cache
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, labels=exp.labels, use_cache=use_cache, **lm_kwargs)
        if cache is not None:
            tokens, history = (exp.input_ids, input_ids) if layout is None else \
                (torch.cat((layout[0], exp.input_ids), 1), torch.cat((layout[2], input_ids), 1))
            cache.record(tokens, mask, history)
        markers = input_ids == self.config.media_token_id
        out.label_positions = exp.positions.masked_fill(markers, -1)
        out.labels = exp.labels
        return out

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                 frame_mask: torch.Tensor | None = None, **kwargs):
        """transformers' `generate` plus media; returns `input_ids` followed by the new tokens (as
        the caller wrote them: one marker per media item), or a GenerateOutput whose `sequences`
        are that, with `return_dict_in_generate=True`.

        To continue a conversation, the next call gets the whole token history as input_ids,
        `cache=out.cache` (`past_key_values=out.past_key_values` before transformers 5.24) and
        only the new media; the cache holds the earlier media's tokens. A cache after beam search cannot be continued (its rows are the
        beams, not the sequences returned).
        """
        cache = _pop_cache(kwargs)
        config = kwargs.get("generation_config") or self.lm.generation_config
        if cache is None and kwargs.get("use_cache", getattr(config, "use_cache", True)):
            cache = LlavaCache(config=self.lm.config)
        layout = cache.layout() if cache is not None else None
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError("input_ids: required, a [B, L] tensor; the media markers locate the media")
        projected, frame_mask = self.encode_media(pixel_values, media_features, frame_mask)
        self.check_rows(input_ids, frame_mask)
        done = 0
        if layout is not None:
            tokens, mask, history = layout
            done = history.shape[1]
            if input_ids.shape[0] != history.shape[0] or input_ids.shape[1] < done or \
                    not torch.equal(input_ids[:, :done], history):
                raise ValueError(f"input_ids: must begin with the {list(history.shape)} tokens the cache holds (the "
                                 "history so far, as returned by the previous generate), then the new ones")
        new_mask = attention_mask[:, done:] if attention_mask is not None else None
        exp = self.expand(input_ids[:, done:], new_mask, None, frame_mask, align="right",
                           past=layout[1].sum(-1) if layout is not None else None)
        ids = exp.input_ids if layout is None else torch.cat((layout[0], exp.input_ids), 1)
        mask = exp.attention_mask if layout is None else torch.cat((layout[1], exp.attention_mask), 1)
        if cache is not None:
            kwargs[self._cache_argument] = cache
        kwargs = generation_options(self, kwargs, written=input_ids.shape[1], expanded=ids.shape[1],
                                    marker=self.config.media_token_id)
        features = self.kept_features(projected, frame_mask, exp.kept)
        with self._splicing(features, exp.input_ids):
            out = self.lm.generate(input_ids=ids, attention_mask=mask, **kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        new = sequences[:, ids.shape[1]:]
        repeat = sequences.shape[0] // ids.shape[0]  # num_return_sequences
        full = torch.cat((input_ids.repeat_interleave(repeat, 0), new), 1)
        if cache is not None:
            held = cache.get_seq_length()
            laid = torch.cat((ids.repeat_interleave(repeat, 0), new), 1)
            cache.record(laid[:, :held], torch.cat((mask.repeat_interleave(repeat, 0), torch.ones_like(new)), 1)[:, :held],
                         full[:, :full.shape[1] - (laid.shape[1] - held)])
            if (kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1) > 1:
                cache.refusal = "it comes from beam search, whose cache rows are beams, not the returned sequences"
        if hasattr(out, "sequences"):
            out.sequences = full
            return out
        return full

    @contextmanager
    def _splicing(self, features: torch.Tensor | None, expanded_ids: torch.Tensor):
        """Hand one generate call's projected media to the LM's pre-hook, which writes them at
        the media tokens of every LM step that holds them (the prompt's)."""
        counts = (expanded_ids == self.config.media_token_id).sum(-1)  # [B] media tokens per sample
        self._pending = {"features": features, "counts": counts}
        try:
            yield
        finally:
            self._pending = None

    def _before_lm(self, module, args, kwargs):
        pending = self._pending
        ids = kwargs.get("input_ids", args[0] if args else None)
        if pending is None or ids is None:
            return None
        is_media = ids == self.config.media_token_id
        if not bool(is_media.any()):
            return None
        # the prompt's step (every step without a cache, which feeds the whole sequence each time)
        features, counts = pending["features"], pending["counts"]
        if features is not None and ids.shape[0] != counts.shape[0]:  # rows repeated (beams, num_return_sequences)
            features = _repeat_rows(features, counts, ids.shape[0] // counts.shape[0])
        embeds = self.embed(ids, features)
        return (args[1:] if args else args), {**kwargs, "input_ids": None, "inputs_embeds": embeds}

    def train(self, mode: bool = True):
        """Frozen backbones stay in eval mode (no dropout), whatever the mode of the new parts;
        the LoRA adapters inside the LM follow `mode` (their `lora_dropout` is trained with)."""
        super().train(mode)
        self.lm.eval()
        if self.vision_encoder is not None:
            self.vision_encoder.eval()
        for name, module in self.lm.named_modules():
            if name.rsplit(".", 1)[-1] == "lora_dropout":
                module.train(mode)
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The projector's weights, and the LoRA adapters' when the LM has them."""
        return {k: v for k, v in self.state_dict().items()
                if k.startswith("projector.") or (k.startswith("lm.") and "lora_" in k)}

    def save_pretrained(self, save_directory: str | os.PathLike, *, state_dict: dict | None = None) -> Path:
        """config.json + model.safetensors of the trainable weights (projector, LoRA), and the
        tokenizer when the model has one; backbones are recorded, not copied."""
        config = {"family": "llava", **dataclasses.asdict(self.config)}
        return save_checkpoint(save_directory, config, state_dict or self.trainable_state_dict(), self.tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, lm: nn.Module | None = None,
                        vision_encoder: nn.Module | None = None, check_backbones: bool = True,
                        dtype: torch.dtype | None = None, **overrides) -> "LlavaModel":
        """Rebuild from save_pretrained's directory; backbones load from their recorded local paths
        unless given (checked against their recorded fingerprints), as they ran, or all of the
        model in `dtype`. `overrides`: `max_length`."""
        config, tensors = read_checkpoint(directory, "llava", LlavaConfig, overrides, may_change=("max_length",))
        if config.lm.get("hf_llava") and (lm is None or vision_encoder is None):  # imported by from_hf_llava
            imported = cls.from_hf_llava(config.lm["name_or_path"])
            lm = lm if lm is not None else imported.lm
            vision_encoder = vision_encoder if vision_encoder is not None else imported.vision_encoder.model
        lm, vision_encoder = load_backbones(config.lm, config.vision, lm=lm, vision_encoder=vision_encoder,
                                            check=check_backbones, dtype=dtype)
        model = cls(lm, vision_encoder, config)
        load_into(model, tensors, list(model.trainable_state_dict()), str(directory))
        model.tokenizer = saved_tokenizer(directory)
        return model.to(dtype) if dtype is not None else model


@torch.no_grad()
def _copy_projector(hf_projector: nn.Module, ours: Projector, *, to_hf: bool) -> None:
    """Hugging Face's linear_1 / linear_2 are our projector's layers 0 and 2."""
    for mine, theirs in ((ours[0], hf_projector.linear_1), (ours[2], hf_projector.linear_2)):
        src, dst = (mine, theirs) if to_hf else (theirs, mine)
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)


def _repeat_rows(features: torch.Tensor, counts: torch.Tensor, k: int) -> torch.Tensor:
    """features [T, D] laid out sample after sample (counts[b] tokens each) -> each sample's
    block repeated k times in a row, as generate repeats its rows."""
    starts = counts.cumsum(0) - counts
    rep = counts.repeat_interleave(k)  # [B * k]
    row = torch.repeat_interleave(torch.arange(rep.numel(), device=counts.device), rep)
    within = torch.arange(row.numel(), device=counts.device) - (rep.cumsum(0) - rep)[row]
    return features[starts[row // k] + within]


def _add_lora(lm: nn.Module, config: LlavaConfig) -> None:
    """LoRA adapters on the LM, in place (its module tree, generate and cache stay), via peft."""
    try:
        import peft
    except ImportError as err:  # a declared dependency; only a broken install lacks it
        raise ImportError("lora_rank > 0 needs peft (pip install peft)") from err
    from transformers.pytorch_utils import Conv1D

    conv1d = any(isinstance(m, Conv1D) for m in lm.modules())  # GPT-2's linears store their weights transposed
    lora = peft.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=config.lora_target_modules or _default_targets(lm), fan_in_fan_out=conv1d)
    peft.inject_adapter_in_model(lora, lm)
    for name, p in lm.named_parameters():
        p.requires_grad_("lora_" in name)


def _default_targets(lm: nn.Module):
    import peft

    table = getattr(peft.utils, "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING", {})
    targets = table.get(lm.config.model_type)
    if targets is None:
        raise ValueError(f"lora_target_modules: peft has no default for model type {lm.config.model_type!r}; name "
                         "the modules (e.g. ['q_proj', 'v_proj'])")
    return list(targets)
