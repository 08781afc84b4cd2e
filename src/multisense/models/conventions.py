"""What a Hugging Face transformers user reaches for on any model, for every family (mixin):
`.device`, `.dtype`, `num_parameters()`, `get_input_embeddings()` and `generation_config`, each
as transformers defines it, answered from the family's language model where it has one
(`language_model()`).
"""

from __future__ import annotations

import torch
from torch import nn


class ModelConventions:
    def language_model(self) -> nn.Module | None:
        """The Hugging Face LM the family runs (frozen or trained), or None (a classifier)."""
        return getattr(self, "lm", None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The precision the model computes in: its LM's, else its first floating parameter's."""
        lm = self.language_model()
        for module in (lm, self) if lm is not None else (self,):
            floating = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
            if floating is not None:
                return floating
        return torch.get_default_dtype()

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters counted once each (tied weights once), as transformers counts them."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and id(p) not in skip)

    def get_input_embeddings(self) -> nn.Module:
        lm = self.language_model()
        if lm is None:
            raise AttributeError(f"{type(self).__name__}: this model has no language model, so no input embeddings")
        return lm.get_input_embeddings()

    @property
    def generation_config(self):
        """The LM's generation config: what `generate` starts from (transformers' own object)."""
        lm = self.language_model()
        if lm is None:
            raise AttributeError(f"{type(self).__name__}: this model has no language model and does not generate")
        return lm.generation_config


def check_text_inputs(input_ids, attention_mask=None, labels=None, *, labels_apart: bool = False,
                      return_dict: bool | None = None) -> None:
    """What every family's forward checks first, each error naming the argument: `input_ids`
    [B, L] of token ids; `attention_mask` with one row per sequence (it may also cover a cache,
    so its length is the LM's to check); `labels` [B, L] like `input_ids`, or [B, T] when they
    are read apart (an encoder-decoder's answer); `return_dict` not False (the outputs carry
    fields a tuple would lose: label_positions, media_latents, ...)."""
    if return_dict is not None and not return_dict:
        raise ValueError("return_dict: multisense models return ModelOutput objects (return_dict=False is not "
                         "supported); index the output as out.logits, out.loss")
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        got = f"shape {list(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else \
            type(input_ids).__name__
        raise ValueError(f"input_ids: expected a [B, L] tensor of token ids, got {got}")
    rows = input_ids.shape[0]
    if attention_mask is not None and (attention_mask.ndim != 2 or attention_mask.shape[0] != rows):
        raise ValueError(f"attention_mask: expected [B, L] with B={rows} (one row per sequence of input_ids), got "
                         f"{list(attention_mask.shape)}")
    if labels is None:
        return
    if labels_apart:
        if labels.ndim != 2 or labels.shape[0] != rows:
            raise ValueError(f"labels: expected [B, T] with B={rows} (the answers of input_ids' sequences), got "
                             f"{list(labels.shape)}")
    elif labels.shape != input_ids.shape:
        raise ValueError(f"labels: expected the shape of input_ids {list(input_ids.shape)} (a label per token, "
                         f"{-100} where none), got {list(labels.shape)}")


def generation_options(model, kwargs: dict, *, written: int | None, expanded: int, marker: int | None) -> dict:
    """The keywords for the LM's `generate`, from a family's `generate(**kwargs)`:
    - `suppress_tokens`: the caller's (or its generation_config's) plus the media marker, which
      the LM must never write (where the marker is a row of its vocabulary);
    - `max_length` counts the tokens the caller wrote (`written` per row) and the new ones, as in
      transformers, not the LM's `expanded` sequence (a prompt's image tokens): it becomes
      `max_new_tokens` (`written` None: an encoder-decoder's, which counts its decoder's tokens);
    - the LM's position limit: a prompt and `max_new_tokens` that would run past it are refused
      here rather than failing inside the LM's position table."""
    lm = model.language_model()
    config = kwargs.get("generation_config") or lm.generation_config
    out = dict(kwargs)
    if marker is not None and marker < lm.get_input_embeddings().num_embeddings:
        given = out.get("suppress_tokens", getattr(config, "suppress_tokens", None)) or []
        out["suppress_tokens"] = list(dict.fromkeys([*given, marker]))
    if written is not None and out.get("max_length") is not None:
        if out.get("max_new_tokens") is not None:
            raise ValueError("max_length: give max_length or max_new_tokens, not both")
        new = out.pop("max_length") - written
        if new < 1:
            raise ValueError(f"max_length: {written + new} leaves no room after the {written}-token prompt")
        out["max_new_tokens"] = new
    limit = getattr(lm.config, "max_position_embeddings", None)
    new = out.get("max_new_tokens") or getattr(config, "max_new_tokens", None)
    if limit is not None and new is not None and expanded + new > limit:
        raise ValueError(f"max_new_tokens: the prompt takes {expanded} of the LM's {limit} positions (its media "
                         f"tokens included), so at most {max(0, limit - expanded)} new tokens fit, not {new}")
    return out


def context_limit(model) -> int | None:
    """The LM tokens one sequence may take: the family's budget (`max_length()`), else its LM's
    position limit; None where positions are relative (T5)."""
    if hasattr(model, "max_length"):
        return model.max_length()
    lm = model.language_model()
    return getattr(lm.config, "max_position_embeddings", None) if lm is not None else None


def check_context(model, batch: dict, *, where: str) -> None:
    """Refuse a batch some sample of which does not fit the LM's context (its media tokens
    included), naming how far over it is: a budget that drops a sample's media and with them its
    labels would leave nothing to learn or score."""
    limit = context_limit(model)
    if limit is None or "input_ids" not in batch or not hasattr(model, "context_tokens"):
        return
    tokens = model.context_tokens(batch["input_ids"], batch.get("attention_mask"), batch.get("frame_mask"))
    worst = int(tokens.max())
    if worst > limit:
        over = int((tokens > limit).sum())
        raise ValueError(f"{where}: {over} of {tokens.numel()} samples do not fit the LM's context of {limit} tokens "
                         f"(the longest takes {worst}, {worst - limit} over, media tokens included); use fewer or "
                         "shorter media, fewer shots, or an LM with more positions")
