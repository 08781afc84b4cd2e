"""The one mask builder: which media each text token may see, and the prefix-LM rule.

Flamingo's interleaved masking: `media_index[b, t]` is the number of media markers at or
before token t (the marker token belongs to its own media). Modes, all causal:
  immediate       a token sees only media number media_index (1-based; 0 = none yet)
  all_previous    a token sees every media <= media_index
  window:k        a token sees the k most recent media <= media_index
A token that sees no media gets exactly zero attention output.

`MediaRouting` is built once per forward pass and shared by every cross-attention layer.
In `immediate` mode it holds gather indices instead of a mask: the tokens that see media m
form one contiguous run (media_index is a running count), so runs are gathered into a
[B*M, Ls, .] layout and each run attends only to its own media's R latents; the cost no
longer grows with the number of media M.

Shape letters: B batch, L text length, M media items, R latents per media item,
Ls longest run of tokens that see the same media item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("immediate", "all_previous", "window:k")


def parse_mode(mode: str) -> int | None:
    """How many most-recent media a token sees: 1 (immediate), k (window:k), None (all)."""
    if mode == "immediate":
        return 1
    if mode == "all_previous":
        return None
    if isinstance(mode, str) and mode.startswith("window:"):
        try:
            k = int(mode.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise ValueError(f"mode: expected one of 'immediate', 'all_previous', 'window:k' (k >= 1), got {mode!r}")


def media_index(input_ids: torch.Tensor, media_token_id: int, *, offset: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L] running count of media markers; `offset` [B] adds markers already seen (a KV cache)."""
    idx = (input_ids == media_token_id).cumsum(dim=-1)
    return idx if offset is None else idx + offset.unsqueeze(-1)


def check_media_counts(num_markers: torch.Tensor, num_media: torch.Tensor) -> None:
    """Raise a ValueError naming every sample whose marker count differs from its media count."""
    bad = (num_markers != num_media).nonzero().flatten().tolist()
    if bad:
        detail = ", ".join(f"sample {b}: {int(num_markers[b])} markers for {int(num_media[b])} media items"
                           for b in bad[:8])
        raise ValueError(f"media markers in input_ids do not match the media given ({detail}); "
                         "each media item needs exactly one marker token, in order")


def media_visibility(media_idx: torch.Tensor, num_media: int, mode: str = "immediate") -> torch.Tensor:
    """[B, L, M] bool: may token t see media item m (0-based)? Causal in every mode."""
    window = parse_mode(mode)
    m = torch.arange(num_media, device=media_idx.device)
    idx = media_idx.unsqueeze(-1)
    allowed = m < idx
    if window is not None:
        allowed = allowed & (m >= idx - window)
    return allowed


@dataclass
class MediaRouting:
    """Per-forward routing of text tokens to media latents, shared by all gated layers."""

    mode: str
    sees_media: torch.Tensor  # [B, L] bool
    mask: torch.Tensor | None = None  # dense modes: [B, 1, L, M*R] bool
    token_of_slot: torch.Tensor | None = None  # immediate: [B*M*Ls] flat token index for each run slot
    slot_of_token: torch.Tensor | None = None  # immediate: [B*L] flat run-slot index for each token
    run_length: int = 0  # immediate: Ls

    @classmethod
    def build(cls, media_idx: torch.Tensor, *, num_media: int, num_latents: int,
              mode: str = "immediate") -> "MediaRouting":
        window = parse_mode(mode)
        if num_media > 0 and media_idx.numel() and int(media_idx.max()) > num_media:
            raise ValueError(f"media_index: a token refers to media item {int(media_idx.max())} "
                             f"but only {num_media} media items were given")
        sees = media_idx > 0
        if num_media == 0:
            return cls(mode=mode, sees_media=sees)
        if window != 1:
            allowed = media_visibility(media_idx, num_media, mode)  # [B, L, M]
            mask = allowed.unsqueeze(-1).expand(*allowed.shape, num_latents).flatten(-2).unsqueeze(1)
            return cls(mode=mode, sees_media=sees, mask=mask)
        return cls._immediate(media_idx, num_media, sees)

    @classmethod
    def _immediate(cls, media_idx: torch.Tensor, num_media: int, sees: torch.Tensor) -> "MediaRouting":
        B, L = media_idx.shape
        dev = media_idx.device
        counts = torch.zeros(B, num_media + 1, dtype=torch.long, device=dev)
        counts.scatter_add_(1, media_idx, torch.ones_like(media_idx))  # [B, M+1] tokens per media value
        starts = counts.cumsum(1) - counts  # first token of each run (runs are contiguous)
        run_len = max(int(counts[:, 1:].max()), 1)
        t = torch.arange(L, device=dev)
        b = torch.arange(B, device=dev).unsqueeze(-1)
        # token -> slot: (b, m, position in run) flattened; tokens that see nothing point at slot 0
        pos = t - starts.gather(1, media_idx)
        slot = (b * num_media + (media_idx - 1).clamp(min=0)) * run_len + pos
        slot_of_token = torch.where(sees, slot, 0).flatten()
        # slot -> token: slots past a run's end point at token 0; their outputs are never read
        p = torch.arange(run_len, device=dev)
        run_start = starts[:, 1:].unsqueeze(-1)  # [B, M, 1]
        valid = p < counts[:, 1:].unsqueeze(-1)  # [B, M, Ls]
        token = b.unsqueeze(-1) * L + run_start + p
        token_of_slot = torch.where(valid, token, 0).flatten()
        return cls(mode="immediate", sees_media=sees, token_of_slot=token_of_slot,
                   slot_of_token=slot_of_token, run_length=run_len)


def prefix_lm_mask(starts_block: torch.Tensor) -> torch.Tensor:
    """[B, L] bool 'starts a new causal block' -> [B, L, L] allowed (query i, key j).

    allowed[i, j] = cumsum(ar)[j] <= cumsum(ar)[i]: all ones gives a causal mask, a leading
    run of zeros a prefix-LM (bidirectional prefix, causal suffix), other patterns block-causal.
    """
    c = starts_block.long().cumsum(dim=-1)
    return c.unsqueeze(-2) <= c.unsqueeze(-1)
