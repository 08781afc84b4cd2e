"""Samples of interleaved text and media, and their collation into model inputs.

Two kinds of example share one collator:

- `Sample`: a prompt and a target; the prompt holds one `<image>` marker per media item, in
  order, and the loss falls on the target tokens (plus end-of-sequence) only. Used for
  question answering, captioning prompts and few-shot evaluation.
- `Document`: interleaved text with one marker per media item, trained Flamingo-style: loss on
  every text token after the first marker (plus end-of-sequence), none on the text before it,
  on the markers or on padding.

A media item is a tensor of frames [F, C, H, W] (an image is one frame, a clip F frames).

Batches pad text (right for training, left for generation), media per sample and frames per
media item, with masks: input_ids/attention_mask/labels [B, L], pixel_values [B, M, F, C, H, W],
frame_mask [B, M, F].

An encoder-decoder (PaLI) takes the same examples laid out for its two halves (`seq2seq=True`):
input_ids/attention_mask [B, L] hold the prompt (a Document's text up to and including its first
marker), labels [B, T] the target and end-of-sequence (a Document's text after it), padded with
IGNORE_INDEX. The split is the one the causal labels make: the loss falls on the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..tokens import IGNORE_INDEX, MEDIA_MARKER


@dataclass
class Sample:
    prompt: str
    target: str = ""
    media: list[torch.Tensor] = field(default_factory=list)  # each [F, C, H, W]


@dataclass
class Document:
    text: str
    media: list[torch.Tensor] = field(default_factory=list)  # each [F, C, H, W]
    # Optional: the same text with each marker replaced by one word naming its media (token for
    # token aligned), the teacher's input for in-words distillation (train.distill_words).
    words: str | None = None


def _marker_id(tokenizer, marker: str) -> int:
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"marker: {marker!r} tokenises to {len(ids)} tokens, expected one special token; "
                         "add it to the tokenizer (FlamingoModel.from_lm(tokenizer=...) does)")
    return ids[0]


def _document_labels(ids: list[int], marker_id: int) -> list[int]:
    """Flamingo-style labels: IGNORE_INDEX up to and including the first marker and on every marker."""
    if marker_id not in ids:
        return [IGNORE_INDEX] * len(ids)
    first = ids.index(marker_id)
    return [IGNORE_INDEX if (i <= first or t == marker_id) else t for i, t in enumerate(ids)]


def pad_media(media: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """Per-sample lists of [F, C, H, W] -> pixel_values [B, M, F, C, H, W], frame_mask [B, M, F]."""
    M = max((len(m) for m in media), default=0)
    if M == 0:
        return None, None
    items = [x for m in media for x in m]
    F = max(x.shape[0] for x in items)
    C, H, W = items[0].shape[1:]
    pixels = items[0].new_zeros(len(media), M, F, C, H, W)
    mask = torch.zeros(len(media), M, F, dtype=torch.bool)
    for b, sample_media in enumerate(media):
        for m, x in enumerate(sample_media):
            if x.shape[1:] != (C, H, W):
                raise ValueError(f"media: sample {b} item {m} has frames {list(x.shape[1:])}, expected {[C, H, W]}")
            pixels[b, m, : x.shape[0]] = x
            mask[b, m, : x.shape[0]] = True
    return pixels, mask


def collate(samples: list[Sample | Document], tokenizer, *, for_generation: bool = False,
            marker: str = MEDIA_MARKER, words: bool = False, seq2seq: bool = False) -> dict[str, torch.Tensor]:
    """Tokenise and pad. Training: right-padded, with labels (a Sample's on target+eos, a
    Document's on its text after the first marker, plus eos). Generation: prompts only (a
    Document's whole text), left-padded so every prompt ends at the last position.
    `words`: also `words_input_ids` [B, L], every Document's `words` aligned with its text.
    `seq2seq`: prompts and targets apart, for an encoder-decoder (module docstring)."""
    if seq2seq:
        if words:
            raise ValueError("words: in-words distillation compares a causal LM's states; not with seq2seq=True")
        return _collate_seq2seq(samples, tokenizer, for_generation=for_generation, marker=marker)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rows, labels = [], []
    for s in samples:
        if isinstance(s, Document):
            ids = tokenizer(s.text, add_special_tokens=False)["input_ids"] + ([] if for_generation else [eos])
            rows.append(ids)
            labels.append(_document_labels(ids, _marker_id(tokenizer, marker)))
            continue
        p = tokenizer(s.prompt, add_special_tokens=False)["input_ids"]
        t = [] if for_generation else tokenizer(s.target, add_special_tokens=False)["input_ids"] + [eos]
        rows.append(p + t)
        labels.append([IGNORE_INDEX] * len(p) + t)
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    att = torch.zeros(len(rows), L, dtype=torch.long)
    lab = torch.full((len(rows), L), IGNORE_INDEX, dtype=torch.long)
    for b, (r, y) in enumerate(zip(rows, labels)):
        sl = slice(L - len(r), L) if for_generation else slice(0, len(r))
        ids[b, sl], att[b, sl], lab[b, sl] = torch.tensor(r), 1, torch.tensor(y)
    batch = {"input_ids": ids, "attention_mask": att}
    if not for_generation:
        batch["labels"] = lab
    if words:
        batch["words_input_ids"] = _words_ids(samples, tokenizer, ids, [len(r) for r in rows], for_generation)
    pixels, mask = pad_media([s.media for s in samples])
    if pixels is not None:
        batch["pixel_values"], batch["frame_mask"] = pixels, mask
    return batch


def _collate_seq2seq(samples: list[Sample | Document], tokenizer, *, for_generation: bool,
                     marker: str) -> dict[str, torch.Tensor]:
    eos, marker_id = tokenizer.eos_token_id, None
    prompts, targets = [], []
    for b, s in enumerate(samples):
        if isinstance(s, Sample):
            prompts.append(tokenizer(s.prompt, add_special_tokens=False)["input_ids"])
            targets.append(tokenizer(s.target, add_special_tokens=False)["input_ids"] + [eos])
            continue
        marker_id = marker_id if marker_id is not None else _marker_id(tokenizer, marker)
        ids = tokenizer(s.text, add_special_tokens=False)["input_ids"]
        cut = ids.index(marker_id) + 1 if marker_id in ids else len(ids)
        if marker_id in ids[cut:]:
            raise ValueError(f"samples[{b}]: a Document with {ids.count(marker_id)} media markers; an encoder-decoder "
                             "reads them before its first marker and writes the text after it, which must hold none "
                             "(one media item per document; a task's training documents: data.max_shots=0)")
        prompts.append(ids[:cut])
        targets.append(ids[cut:] + [eos])
    L, T = max(len(p) for p in prompts), max(len(t) for t in targets)
    ids = torch.full((len(prompts), L), tokenizer.pad_token_id, dtype=torch.long)
    att = torch.zeros(len(prompts), L, dtype=torch.long)
    lab = torch.full((len(prompts), T), IGNORE_INDEX, dtype=torch.long)
    for b, (p, t) in enumerate(zip(prompts, targets)):
        sl = slice(L - len(p), L) if for_generation else slice(0, len(p))
        ids[b, sl], att[b, sl], lab[b, : len(t)] = torch.tensor(p, dtype=torch.long), 1, torch.tensor(t)
    batch = {"input_ids": ids, "attention_mask": att}
    if not for_generation:
        batch["labels"] = lab
    pixels, mask = pad_media([s.media for s in samples])
    if pixels is not None:
        batch["pixel_values"], batch["frame_mask"] = pixels, mask
    return batch


def _words_ids(samples, tokenizer, ids: torch.Tensor, lengths: list[int], for_generation: bool) -> torch.Tensor:
    """[B, L] the Documents' `words`, padded like `ids`; each must tokenise to its text's length."""
    out = torch.full_like(ids, tokenizer.pad_token_id)
    for b, (s, n) in enumerate(zip(samples, lengths)):
        if not isinstance(s, Document) or s.words is None:
            raise ValueError(f"samples[{b}]: words=True needs every sample to be a Document with `words`")
        row = tokenizer(s.words, add_special_tokens=False)["input_ids"] + ([] if for_generation else [tokenizer.eos_token_id])
        if len(row) != n:
            raise ValueError(f"samples[{b}].words: {len(row)} tokens for {n} in its text; each marker must be "
                             "replaced by exactly one token")
        sl = slice(ids.shape[1] - n, None) if for_generation else slice(0, n)
        out[b, sl] = torch.tensor(row)
    return out
