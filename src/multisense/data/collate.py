"""Samples of interleaved text and media, and their collation into model inputs.

A `Sample` is a prompt and a target; the prompt holds one `<image>` marker per media item,
in order, and the loss falls on the target tokens (plus end-of-sequence) only. A media item
is a tensor of frames [F, C, H, W] (an image is one frame).

Batches pad text (right for training, left for generation), media per sample and frames per
media item, with masks: input_ids/attention_mask/labels [B, L], pixel_values [B, M, F, C, H, W],
frame_mask [B, M, F].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Sample:
    prompt: str
    target: str = ""
    media: list[torch.Tensor] = field(default_factory=list)  # each [F, C, H, W]


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


def collate(samples: list[Sample], tokenizer, *, for_generation: bool = False) -> dict[str, torch.Tensor]:
    """Tokenise and pad. Training: prompt+target+eos, right-padded, labels on target+eos.
    Generation: prompts only, left-padded (so every prompt ends at the last position)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rows, labels = [], []
    for s in samples:
        p = tokenizer(s.prompt, add_special_tokens=False)["input_ids"]
        t = [] if for_generation else tokenizer(s.target, add_special_tokens=False)["input_ids"] + [eos]
        rows.append(p + t)
        labels.append([-100] * len(p) + t)
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    att = torch.zeros(len(rows), L, dtype=torch.long)
    lab = torch.full((len(rows), L), -100, dtype=torch.long)
    for b, (r, y) in enumerate(zip(rows, labels)):
        sl = slice(L - len(r), L) if for_generation else slice(0, len(r))
        ids[b, sl], att[b, sl], lab[b, sl] = torch.tensor(r), 1, torch.tensor(y)
    batch = {"input_ids": ids, "attention_mask": att}
    if not for_generation:
        batch["labels"] = lab
    pixels, mask = pad_media([s.media for s in samples])
    if pixels is not None:
        batch["pixel_values"], batch["frame_mask"] = pixels, mask
    return batch
