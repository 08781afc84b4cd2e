"""Splicing media tokens into a text sequence (LLaVA, Liu et al. 2023; PaLI, Chen et al. 2022).

Text arrives with one marker token per media item (the data path every family shares). A family
that reads media as tokens of the LM's own sequence expands each marker into the item's tokens,
`tokens_per_item[b, m]` of them (frames x tokens per frame), and writes the projected features
there. `expand_markers` does the expansion for a whole batch at once (no loop over samples):
padding is dropped and each row re-packed, left-aligned (training: padding after) or
right-aligned (generation: every prompt ends at the last position), and a length budget is
applied before splicing, so that an item is kept whole or dropped whole, never cut in half.

Shape letters: B batch, L input length, M media items, E expanded length.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..tokens import IGNORE_INDEX
from .masks import check_media_counts


@dataclass
class Expansion:
    input_ids: torch.Tensor  # [B, E]: markers repeated over their items' tokens, padding with pad_id
    attention_mask: torch.Tensor  # [B, E] long, 1 = real token
    labels: torch.Tensor | None  # [B, E], IGNORE_INDEX on media tokens and padding
    positions: torch.Tensor  # [B, L]: where each input token went (a marker: its item's first token), -1 if dropped
    kept: torch.Tensor  # [B, M] bool: media items spliced in (real ones the budget did not drop)
    position_ids: torch.Tensor  # [B, E]: 0, 1, ... over each row's real tokens, after `past` of them


def expand_markers(input_ids: torch.Tensor, marker_id: int, tokens_per_item: torch.Tensor, *,
                   attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                   pad_id: int = 0, align: str = "left", past: torch.Tensor | None = None,
                   max_length: int | None = None) -> Expansion:
    """Expand each marker of `input_ids` [B, L] into the tokens of its media item.

    `tokens_per_item` [B, M]: how many tokens each item occupies, 0 for padding items; a
    sample's real items come first, in the order of its markers (checked: as many markers as
    real items, one error text for every family). `past` [B]: real tokens already before this
    chunk (a KV cache), counted by the budget and the position ids. `max_length`: the budget in
    tokens per row, past included; what does not fit is dropped from the end of the row, an item
    together with all its tokens, with a warning that says what was dropped.
    """
    B, L = input_ids.shape
    device = input_ids.device
    if align not in ("left", "right"):
        raise ValueError(f"align: expected 'left' or 'right', got {align!r}")
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    is_marker = (input_ids == marker_id) & real
    per_item = tokens_per_item.to(device=device, dtype=torch.long)
    check_media_counts(is_marker.sum(-1), (per_item > 0).sum(-1))
    ordinal = (is_marker.cumsum(-1) - 1).clamp(min=0)  # [B, L]: which item a marker stands for
    item_tokens = per_item.gather(1, ordinal) if per_item.shape[1] else torch.zeros_like(ordinal)
    counts = torch.where(is_marker, item_tokens, real.long())  # [B, L]: 0 for padding
    before = past.to(device).long() if past is not None else torch.zeros(B, dtype=torch.long, device=device)

    # the budget: a token stays if all of it fits (a marker's end is its item's last token)
    ends = before.unsqueeze(-1) + counts.cumsum(-1)
    keep = real & (ends <= max_length) if max_length is not None else real
    kept_items = torch.zeros_like(per_item, dtype=torch.bool)
    if per_item.shape[1]:
        rows, cols = (is_marker & keep).nonzero(as_tuple=True)
        kept_items[rows, ordinal[rows, cols]] = True
    if max_length is not None and not bool((keep == real).all()):
        _warn_dropped(real, keep, is_marker, ordinal, max_length)
    counts = counts * keep

    length = counts.sum(-1)  # [B]
    E = int(length.max()) if B else 0
    shift = (E - length) if align == "right" else torch.zeros_like(length)
    starts = counts.cumsum(-1) - counts + shift.unsqueeze(-1)  # [B, L] first expanded column of each token
    positions = torch.where(keep, starts, torch.full_like(starts, -1))

    # every expanded element: its source token (row-major), then its column
    flat = counts.flatten()
    src = torch.repeat_interleave(torch.arange(B * L, device=device), flat)
    first_of_src = torch.repeat_interleave(flat.cumsum(0) - flat, flat)
    col = starts.flatten()[src] + (torch.arange(src.numel(), device=device) - first_of_src)
    row = src // L
    ids = torch.full((B, E), pad_id, dtype=input_ids.dtype, device=device)
    mask = torch.zeros(B, E, dtype=torch.long, device=device)
    ids[row, col] = input_ids.flatten()[src]
    mask[row, col] = 1
    out_labels = None
    if labels is not None:
        out_labels = torch.full((B, E), IGNORE_INDEX, dtype=labels.dtype, device=device)
        source_labels = labels.masked_fill(is_marker, IGNORE_INDEX).flatten()[src]
        out_labels[row, col] = source_labels
    position_ids = (before.unsqueeze(-1) + mask.cumsum(-1) - 1).clamp(min=0) * mask
    return Expansion(ids, mask, out_labels, positions, kept_items, position_ids)


def _warn_dropped(real, keep, is_marker, ordinal, max_length) -> None:
    dropped = real & ~keep
    parts = []
    for b in dropped.any(-1).nonzero().flatten().tolist()[:8]:
        items = ordinal[b][dropped[b] & is_marker[b]].tolist()
        text = f"sample {b}: {int(dropped[b].sum())} tokens"
        parts.append(text + (f" including media items {items} (whole)" if items else ""))
    warnings.warn(f"max_length={max_length}: dropped from the end of the sequence: {'; '.join(parts)}",
                  stacklevel=3)
