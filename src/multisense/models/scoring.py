"""How a labelled batch is run through a model: one function that training, evaluation and the
comparisons share, so a model is scored exactly as it was trained.

A family says three things about its labels (`LabelLayout`), and a plain Hugging Face LM gets
the defaults of its kind:
- `reads_labels`: its forward needs them, because they shape what it computes: an encoder-decoder's
  decoder reads them shifted right (teacher forcing), and a prefix-LM's mask makes the answer,
  the labelled tokens, causal. A family that reads them and does not get them would let the
  answer see itself.
- `shift_labels`: the logits at t predict the label at t + 1 (a causal LM), or the label at t
  (a decoder's logits line up with its labels).
- `align_labels(out, labels)`: the labels [B, L] laid out like `out.logits` [B, E, V] (LLaVA's and
  PaLI's sequences hold each image's tokens where the batch held one marker).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def is_encoder_decoder(model) -> bool:
    """Whether `model` (a family's model or a Hugging Face LM) takes prompt and target apart
    (`collate(..., seq2seq=True)`): PaLI over an encoder-decoder, or the encoder-decoder itself."""
    flag = getattr(model, "is_encoder_decoder", None)
    return bool(flag if flag is not None else getattr(getattr(model, "config", None), "is_encoder_decoder", False))


@dataclass(frozen=True)
class LabelLayout:
    reads_labels: bool
    shift_labels: bool
    align_labels: Callable | None = None

    def align(self, out, labels: torch.Tensor) -> torch.Tensor:
        return labels if self.align_labels is None else self.align_labels(out, labels)


def label_layout(model) -> LabelLayout:
    """The layout `model` declares (a family's attributes), or its kind's default (a plain LM)."""
    seq2seq = is_encoder_decoder(model)
    return LabelLayout(reads_labels=bool(getattr(model, "reads_labels", seq2seq)),
                       shift_labels=bool(getattr(model, "shift_labels", not seq2seq)),
                       align_labels=getattr(model, "align_labels", None))


def scored_forward(model, batch: dict, labels: torch.Tensor, layout: LabelLayout | None = None):
    """(output, labels laid out like output.logits) for `batch` and its token `labels` [B, L].

    `model` may be a wrapper (DDP, a distillation objective) around the family's model; then pass
    the family's `layout` (`label_layout(family_model)`)."""
    layout = layout or label_layout(model)
    out = model(**batch, labels=labels) if layout.reads_labels else model(**batch)
    return out, layout.align(out, labels)
