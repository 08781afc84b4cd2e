"""PaLI (Chen et al. 2022): one encoder-decoder over image and text tokens together, all of it trained.

A vision encoder's patch tokens, projected linearly to the LM's width, take the place of each
media marker in the prompt (`SplicedMedia`, shared with LLaVA), and the *encoder* of a Hugging
Face encoder-decoder LM (T5, mT5, ...) reads image and prompt together, bidirectionally; the
decoder writes the answer with transformers' `generate` and its cache. Prompts take PaLI's form,
"<image> caption aa", "<image> answer bb <question>" (`data.languages`): the image's tokens
come first, as PaLI places them, because the marker is written first. Unlike the frozen-backbone
families, every parameter trains by default (vision encoder, projector, LM);
`freeze_vision` / `freeze_lm` keep either fixed.

Over a causal LM (its config not `is_encoder_decoder`) the same class is the decoder-only
prefix-LM variant (PaliGemma, Beyer et al. 2024): image and prompt attend to each other both
ways, the answer causally, by the one mask rule of `nn.masks.prefix_lm_mask` (the answer's
tokens each start a causal block; the prompt's do not). The LM gets it as a 4-D additive mask,
in training and at the prompt's step of `generate`; later steps are causal anyway.

Inputs, as every family takes them: one marker per media item in `input_ids`, `pixel_values`
[B, M, F, C, H, W], `frame_mask` [B, M, F]. Encoder-decoder: `input_ids` is the prompt and
`labels` [B, T] the answer (`collate(..., seq2seq=True)`), so the logits [B, T, V] are the
decoder's and line up with the labels (`shift_labels` False). Prefix-LM: prompt and answer in
one row with labels on the answer, as for causal LMs; from the first labelled token on, the row
is causal, and with no labels the whole input is prefix. `generate` returns `input_ids` followed by the new
tokens in both cases, as every family's does.

Shape letters: B batch, L input length, M media items, F frames, N tokens per frame, D LM width,
E expanded length, T answer length, V vocabulary.
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

from ..config import FamilyConfig, check_choice
from ..encoders import MediaStandardization
from ..nn import Projector
from ..nn.masks import prefix_lm_mask
from ..nn.projector import PROJECTORS
from ..tokens import IGNORE_INDEX
from .conventions import ModelConventions, check_text_inputs, generation_options
from .io import attach_identities, load_backbones, load_into, read_checkpoint, save_checkpoint, saved_tokenizer
from .spliced_media import SELECT_STRATEGIES, SplicedMedia, measure_tokens


@dataclass
class PaLIConfig(FamilyConfig):
    """Everything that shapes a PaLIModel apart from the weights of its two backbones."""

    media_token_id: int | None = None
    projector: str = "linear"  # PaLI projects the ViT's tokens with one linear layer; or "mlp2x_gelu"
    projector_bias: bool = True
    vision_feature_layer: int | list[int] | None = None  # None: the encoder's last hidden state
    vision_feature_select_strategy: str = "default"  # "default": class token dropped, "full": kept
    tokens_per_frame: int | None = None  # measured by from_lm when the encoder says its image size
    max_length: int | None = None  # budget of the encoder's (prefix's) input; None: the LM's position limit, if any
    freeze_vision: bool = False
    freeze_lm: bool = False
    # standardise each channel of the vision features with statistics measured once, before training
    # (`calibrate_media`): a tower's tokens that share a large offset (the embedded one's: norm 63 of
    # 74) reach the LM nearly alike, next to embeddings of norm 11, and train slowly
    standardize_media: bool = False
    decoder_layers_attr: str | None = None  # a causal LM's layers, where lm.adapters cannot find them
    dim_media: int | None = None
    lm: dict = field(default_factory=dict)  # identity of the LM (filled by from_lm), with its config
    vision: dict = field(default_factory=dict)  # identity of the vision encoder, with its config

    def validate(self, where: str = "") -> None:
        check_choice(self.projector, PROJECTORS, f"{where}projector")
        check_choice(self.vision_feature_select_strategy, SELECT_STRATEGIES, f"{where}vision_feature_select_strategy")
        if self.max_length is not None:
            self.check_positive(where, "max_length")


class PaLIModel(ModelConventions, SplicedMedia, MediaStandardization, nn.Module):
    """A vision encoder, a linear projector and a Hugging Face LM (encoder-decoder, or a causal LM
    used as a prefix-LM), trained together."""

    trains_on_samples = True  # a prompt -> answer model: the trainer gives it task episodes, not documents
    reads_labels = True  # the decoder's input, or the prefix-LM's causal answer (models.scoring)
    accepts_encoder_decoder = True  # its LM may be T5 / mT5 as well as a causal LM

    def __init__(self, lm: nn.Module, vision_encoder: nn.Module | None, config: PaLIConfig):
        super().__init__()
        if config.media_token_id is None:
            raise ValueError("media_token_id: required (or pass tokenizer= to from_lm to add an <image> token)")
        check_choice(config.vision_feature_select_strategy, SELECT_STRATEGIES, "vision_feature_select_strategy")
        self.config = config
        self.lm = lm
        self.tokenizer = None
        self.is_encoder_decoder = bool(getattr(lm.config, "is_encoder_decoder", False))
        dim_media = self._attach_vision(vision_encoder, config)
        for p in self.lm.parameters():
            p.requires_grad_(not config.freeze_lm)
        if self.vision_encoder is not None:
            for p in self.vision_encoder.parameters():
                p.requires_grad_(not config.freeze_vision)
            if config.tokens_per_frame is None:
                config.tokens_per_frame = measure_tokens(self.vision_encoder)
            if not config.freeze_vision:
                _freeze_unreached(self.vision_encoder)
        dim = lm.get_input_embeddings().embedding_dim
        self.projector = Projector(dim_media, dim, kind=config.projector, bias=config.projector_bias)
        self._init_standardization(dim_media)  # identity until calibrate_media
        self._prefix_mask: torch.Tensor | None = None  # the prompt step's mask, for the pre-hook (prefix-LM)
        self._position_ids = "position_ids" in inspect.signature(lm.forward).parameters
        if not self.is_encoder_decoder:
            self._check_prefix_attention()
            self._hooks = [lm.register_forward_pre_hook(self._before_lm, with_kwargs=True)]
        self.train(False)

    @torch.no_grad()
    def _check_prefix_attention(self) -> None:
        """Refuse a causal LM whose attention ignores a 4-D mask: the prefix-LM would silently be
        causal (transformers 5.0's GPT-2 eager attention applies its own causal mask on top of the
        one given). Two tokens, both allowed to see each other: the first must see the second."""
        lm, dtype = self.lm, self.lm.get_input_embeddings().weight.dtype
        device = self.lm.get_input_embeddings().weight.device
        embeds = torch.randn(1, 2, lm.get_input_embeddings().embedding_dim, generator=torch.Generator().manual_seed(0))
        embeds = embeds.to(device=device, dtype=dtype)
        real = torch.ones(1, 2, dtype=torch.long, device=device)
        was_training = lm.training
        lm.eval()
        try:
            first = [lm(inputs_embeds=embeds, attention_mask=self.prefix_mask(real, answer, dtype), use_cache=False)
                     .logits[0, 0] for answer in (torch.zeros_like(real), torch.ones_like(real))]
        finally:
            lm.train(was_training)
        if torch.equal(first[0], first[1]):
            raise ValueError(f"lm: this {lm.config.model_type} ({lm.config._attn_implementation} attention) ignores a "
                             "4-D attention mask, so the prefix-LM's prompt could not attend both ways; build it with "
                             "attn_implementation='sdpa', or use a transformers release whose attention takes the mask")

    @property
    def shift_labels(self) -> bool:
        """A decoder's logits line up with its labels; a causal LM's predict the next token."""
        return not self.is_encoder_decoder

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_lm(cls, lm: nn.Module, vision_encoder: nn.Module | None = None, *, tokenizer=None,
                media_token_id: int | None = None, config: PaLIConfig | None = None, **overrides) -> "PaLIModel":
        """Build over any Hugging Face encoder-decoder LM (T5ForConditionalGeneration, MT5, ...) or
        causal LM (the prefix-LM variant). Keywords are PaLIConfig fields (freeze_vision=True, ...).

        With a `tokenizer` and no `media_token_id`, an `<image>` special token is added to it (the
        LM's embeddings need no row for it: its positions take image tokens); the tokenizer is
        saved by `save_pretrained`."""
        config = (config or PaLIConfig()).replace(**overrides)
        vision_encoder = attach_identities(config, lm, vision_encoder, tokenizer=tokenizer,
                                           media_token_id=media_token_id)
        model = cls(lm, vision_encoder, config)
        model.tokenizer = tokenizer
        return model

    # ------------------------------------------------------------------ forward

    def _inputs(self, input_ids, attention_mask, labels, pixel_values, media_features, frame_mask, *, align: str):
        """(expansion, input embeddings [B, E, D]) of the prompt (and, prefix-LM, its answer)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError("input_ids: required, a [B, L] tensor; the media markers locate the media")
        projected, frame_mask = self.encode_media(pixel_values, media_features, frame_mask)
        self.check_rows(input_ids, frame_mask)
        exp = self.expand(input_ids, attention_mask, labels, frame_mask, align=align)
        return exp, self.embed(exp.input_ids, self.kept_features(projected, frame_mask, exp.kept))

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                frame_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **lm_kwargs):
        """The LM's usual output (loss when labels are given, logits, past_key_values).

        Encoder-decoder: `labels` [B, T] are the answer, the decoder's input is them shifted right
        (or `decoder_input_ids`), and the logits [B, T, V] line up with them. Prefix-LM: the
        output of the expanded sequence [B, E, V], with `label_positions` [B, L] and `labels`
        [B, E] as LLaVA gives them (`align_labels`)."""
        check_text_inputs(input_ids, attention_mask, labels, labels_apart=self.is_encoder_decoder,
                          return_dict=lm_kwargs.get("return_dict"))
        lm_kwargs.setdefault("use_cache", False)  # a training or scoring pass builds no cache
        if self.is_encoder_decoder:
            exp, embeds = self._inputs(input_ids, attention_mask, None, pixel_values, media_features, frame_mask,
                                       align="left")
            return self.lm(inputs_embeds=embeds, attention_mask=exp.attention_mask, labels=labels, **lm_kwargs)
        exp, embeds = self._inputs(input_ids, attention_mask, labels, pixel_values, media_features, frame_mask,
                                   align="left")
        # the answer: from the first labelled token on, all of it causal (a later marker in it must
        # not join the prompt's block, where the tokens before it would see its image)
        answer = (exp.labels != IGNORE_INDEX).cumsum(-1) > 0 if labels is not None else \
            torch.zeros_like(exp.attention_mask, dtype=torch.bool)
        mask = self.prefix_mask(exp.attention_mask, answer, embeds.dtype)
        if self._position_ids:
            lm_kwargs["position_ids"] = exp.position_ids
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, labels=exp.labels, **lm_kwargs)
        out.label_positions = exp.positions.masked_fill(input_ids == self.config.media_token_id, -1)
        out.labels = exp.labels
        return out

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Vision features [..., Dv] -> the LM's width [..., D], standardised first if configured."""
        return self.projector(self.standardize(feats))

    @staticmethod
    def prefix_mask(attention_mask: torch.Tensor, answer: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The prefix-LM's 4-D additive mask [B, 1, E, E] for Hugging Face attention (eager adds it,
        SDPA takes it as is): the prompt's tokens ([B, E] `answer` False) see each other, each
        answer token sees the prompt and the answer so far (`prefix_lm_mask`); padding is seen
        by nothing, and sees only itself (a row with no key would be NaN)."""
        allowed = prefix_lm_mask(answer) & attention_mask.bool().unsqueeze(-2)  # [B, E, E] (query, key)
        allowed |= torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min).unsqueeze(1)

    @staticmethod
    def align_labels(out, labels: torch.Tensor) -> torch.Tensor:
        """The training loop's labels laid out like out.logits: a decoder's are already; a
        prefix-LM's move with the expansion (`label_positions`)."""
        if getattr(out, "label_positions", None) is None:
            return labels
        return SplicedMedia.align_labels(out, labels)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, media_features: torch.Tensor | None = None,
                 frame_mask: torch.Tensor | None = None, **kwargs):
        """transformers' `generate` (the same keywords) plus media; returns `input_ids` followed by
        the new tokens, or a GenerateOutput whose `sequences` are that (`return_dict_in_generate`)."""
        if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
            raise ValueError("past_key_values: PaLIModel.generate encodes the prompt anew each call; continuing a "
                             "cache is not supported (pass the whole prompt)")
        exp, embeds = self._inputs(input_ids, attention_mask, None, pixel_values, media_features, frame_mask,
                                   align="left" if self.is_encoder_decoder else "right")
        # an encoder-decoder's max_length and positions are its decoder's (T5's are relative: no limit)
        kwargs = generation_options(self, kwargs, written=None if self.is_encoder_decoder else input_ids.shape[1],
                                    expanded=0 if self.is_encoder_decoder else embeds.shape[1],
                                    marker=self.config.media_token_id)
        if self.is_encoder_decoder:
            out = self.lm.generate(inputs_embeds=embeds, attention_mask=exp.attention_mask, **kwargs)
            skip = 1  # the decoder's start token
        else:
            answer = torch.zeros_like(exp.attention_mask, dtype=torch.bool)  # the whole prompt is prefix
            with self._prefix(self.prefix_mask(exp.attention_mask, answer, embeds.dtype)):
                out = self.lm.generate(inputs_embeds=embeds, attention_mask=exp.attention_mask, **kwargs)
            skip = 0  # generate from embeddings returns the new tokens only
        sequences = out.sequences if hasattr(out, "sequences") else out
        repeat = sequences.shape[0] // input_ids.shape[0]  # num_return_sequences
        full = torch.cat((input_ids.repeat_interleave(repeat, 0), sequences[:, skip:]), 1)
        if hasattr(out, "sequences"):
            out.sequences = full
            return out
        return full

    @contextmanager
    def _prefix(self, mask: torch.Tensor):
        self._prefix_mask = mask
        try:
            yield
        finally:
            self._prefix_mask = None

    def _before_lm(self, module, args, kwargs):
        """At the prompt's step of a prefix-LM's `generate` (the call that gets the embeddings),
        swap the 2-D padding mask for the prefix mask; later steps are causal and keep theirs."""
        mask = self._prefix_mask
        embeds = kwargs.get("inputs_embeds")
        if mask is None or embeds is None:
            return None
        if embeds.shape[1] != mask.shape[-1] or embeds.shape[0] % mask.shape[0]:
            raise ValueError(f"generate: the language model's first step got {list(embeds.shape[:2])} embeddings, "
                             f"the prompt has {mask.shape[0]} rows of {mask.shape[-1]} tokens")
        self._prefix_mask = None
        return args, {**kwargs, "attention_mask": mask.repeat_interleave(embeds.shape[0] // mask.shape[0], 0)}

    # ------------------------------------------------------------------ what trains, save/load

    def train(self, mode: bool = True):
        """A frozen backbone stays in eval mode (no dropout), whatever the mode of the rest."""
        super().train(mode)
        if self.config.freeze_lm:
            self.lm.eval()
        if self.config.freeze_vision and self.vision_encoder is not None:
            self.vision_encoder.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trained parameter: the projector, and the vision encoder and LM unless frozen (and
        the media statistics, with standardize_media). Tied weights (T5's embeddings and output
        layer) appear once, under their first name."""
        frozen = tuple(prefix for prefix, is_frozen in (("lm.", self.config.freeze_lm),
                                                         ("vision_encoder.", self.config.freeze_vision)) if is_frozen)
        weights = {name: p for name, p in self.named_parameters() if not name.startswith(frozen)}
        if self.config.standardize_media:
            weights.update(media_mean=self.media_mean, media_std=self.media_std)
        return weights

    def transformer_blocks(self) -> list[nn.Module]:
        """The LM's layers (an encoder-decoder's encoder and decoder blocks): the units of FSDP2
        sharding and activation checkpointing."""
        from ..lm.adapters import find_decoder_layers

        if not self.is_encoder_decoder:
            return list(find_decoder_layers(self.lm, self.config.decoder_layers_attr)[1])
        stacks = [self.lm.get_encoder(), self.lm.get_decoder()]
        blocks = [m for stack in stacks for m in stack.children() if isinstance(m, nn.ModuleList)]
        if len(blocks) != 2:
            raise ValueError(f"{type(self.lm).__name__}: expected one ModuleList of blocks in its encoder and "
                             f"decoder, found {len(blocks)}")
        return [*blocks[0], *blocks[1]]

    def save_pretrained(self, save_directory: str | os.PathLike, *, state_dict: dict | None = None) -> Path:
        """config.json + model.safetensors of the trained weights, and the tokenizer when the model
        has one. A trained backbone's config is recorded with its identity, so the directory
        loads alone; a frozen one is recorded, not copied, as in the other families."""
        config = dataclasses.asdict(self.config)
        if not self.config.freeze_lm:
            config["lm"] = {**config["lm"], "config": self.lm.config.to_dict()}
        model = getattr(self.vision_encoder, "model", None)
        if model is not None and not self.config.freeze_vision:
            config["vision"] = {**config["vision"], "config": model.config.to_dict()}
        return save_checkpoint(save_directory, {"family": "pali", **config}, state_dict or self.trainable_state_dict(),
                               self.tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, lm: nn.Module | None = None,
                        vision_encoder: nn.Module | None = None, check_backbones: bool = True,
                        dtype: torch.dtype | None = None, **overrides) -> "PaLIModel":
        """Rebuild from save_pretrained's directory: trained backbones from their recorded configs
        and the saved weights, frozen ones from their recorded local paths (checked against
        their fingerprints) unless given, as they ran, or all of the model in `dtype`.
        `overrides`: `max_length`."""
        config, tensors = read_checkpoint(directory, "pali", PaLIConfig, overrides, may_change=("max_length",))
        if lm is None and "config" in config.lm:
            lm = _from_recorded_config(config.lm, "lm")
        if vision_encoder is None and "config" in config.vision:
            vision_encoder = _from_recorded_config(config.vision, "vision_encoder")
        # a backbone rebuilt for the saved weights has nothing to check against its fingerprint
        lm, vision_encoder = load_backbones(
            {**config.lm, "fingerprint": None} if "config" in config.lm else config.lm,
            {**config.vision, "fingerprint": None} if "config" in config.vision else config.vision,
            lm=lm, vision_encoder=vision_encoder, check=check_backbones, dtype=dtype)
        model = cls(lm, vision_encoder, config)
        load_into(model, tensors, list(model.trainable_state_dict()), str(directory))
        model.tokenizer = saved_tokenizer(directory)
        return model.to(dtype) if dtype is not None else model


def _freeze_unreached(encoder: nn.Module) -> None:
    """Stop training the encoder's parameters that its tokens do not depend on (CLIP's final
    LayerNorm serves only the pooled output): they would get no gradient, which DDP refuses.
    Found by one backward pass from a blank image of the encoder's size, when it says its size."""
    hf = getattr(encoder, "model", None)
    cfg = getattr(getattr(hf, "config", None), "vision_config", None) or getattr(hf, "config", None)
    size, channels = getattr(cfg, "image_size", None), getattr(cfg, "num_channels", 3)
    if not isinstance(size, int):
        return
    param = next(encoder.parameters())
    with torch.enable_grad():
        tokens = encoder(torch.zeros(1, channels, size, size, dtype=param.dtype, device=param.device)).tokens
        reached = torch.autograd.grad(tokens.sum(), [p for p in encoder.parameters() if p.requires_grad],
                                      allow_unused=True)
    for p, grad in zip([p for p in encoder.parameters() if p.requires_grad], reached):
        if grad is None:
            p.requires_grad_(False)


def _from_recorded_config(identity: dict, name: str) -> nn.Module:
    """A backbone built (untrained) from the config its checkpoint recorded, for the saved weights."""
    cls = getattr(transformers, identity.get("class", ""), None)
    if cls is None:
        raise ValueError(f"{name}: the checkpoint records class {identity.get('class')!r}, which transformers "
                         f"{transformers.__version__} does not have; pass {name}= explicitly")
    values = dict(identity["config"])
    config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    if identity.get("attn_implementation"):
        config._attn_implementation = identity["attn_implementation"]
    dtype = getattr(torch, identity.get("dtype") or "float32")
    return cls(config).to(dtype)  # as it trained: the saved weights load into it unchanged
