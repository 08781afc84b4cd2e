"""Media as tokens of the language model's own sequence: what LLaVA and PaLI share.

Both families read an image as a run of projected vision tokens inside the LM's input: each media
marker of `input_ids` is expanded into its item's tokens (`nn.splice.expand_markers`: frames x
tokens per frame, a length budget that keeps or drops an item whole), and the projected features
are written at those positions of the LM's input embeddings. LLaVA does it in a causal LM's
sequence (the image costs context at every layer), PaLI in an encoder-decoder's encoder input
(image and prompt bidirectional) or a prefix-LM's prefix. `SplicedMedia` holds the steps; a
family class mixes it in and provides `config` (media_token_id, tokens_per_frame, dim_media,
max_length), `lm`, `vision_encoder` and `projector`.

Shape letters: B batch, L input length, M media items, F frames, N tokens per frame, Dv vision
width, D LM width, E expanded length, T spliced media tokens in a batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..encoders import as_encoder, check_frame_mask, media_tokens
from ..nn.splice import Expansion, expand_markers
from ..tokens import IGNORE_INDEX

SELECT_STRATEGIES = ("default", "full")  # Hugging Face's names: "default" drops the class token


class SplicedMedia:
    """Encode, project and splice media into the LM's input embeddings (mixin)."""

    def _attach_vision(self, vision_encoder: nn.Module | None, config) -> int:
        """Set `vision_encoder` (as the family's config selects its features: `vision_feature_layer`,
        the class token dropped under the "default" strategy) and `config.dim_media` -> Dv."""
        self.vision_encoder = None
        if vision_encoder is not None:
            self.vision_encoder = as_encoder(vision_encoder, config.dim_media, feature_layer=config.vision_feature_layer,
                                             drop_class_token=config.vision_feature_select_strategy == "default")
        dim_media = config.dim_media or (self.vision_encoder.dim if self.vision_encoder is not None else None)
        if dim_media is None:
            raise ValueError("dim_media: required when no vision_encoder is given (the width of media_features)")
        config.dim_media = dim_media
        return dim_media

    def media_tokens(self, pixel_values, media_features, frame_mask) -> torch.Tensor:
        """The selected vision features [B, M, F, N, Dv] of either input, checked."""
        return media_tokens(self.vision_encoder, pixel_values, media_features, frame_mask, self.config.dim_media)

    def encode_frames(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, M, F, C, H, W] -> [B, M, F, N, Dv] (what eval precomputes once per episode)."""
        return self.media_tokens(pixel_values, None, frame_mask)

    def encode_media(self, pixel_values=None, media_features=None, frame_mask=None):
        """(projected frames [B, M, F, N, D], frame_mask [B, M, F] bool), or (None, None)."""
        if pixel_values is None and media_features is None:
            return None, None
        media = pixel_values if pixel_values is not None else media_features
        frame_mask = check_frame_mask(media, frame_mask)
        if frame_mask is None:
            frame_mask = torch.ones(media.shape[:3], dtype=torch.bool, device=media.device)
        present = frame_mask.any(-1)
        in_order = present == (torch.arange(present.shape[1], device=present.device) < present.sum(-1, keepdim=True))
        if not in_order.all():
            raise ValueError("frame_mask: empty (padding) media items must come after the real ones in each sample")
        feats = self.media_tokens(pixel_values, media_features, frame_mask)
        if self.config.tokens_per_frame is None:
            self.config.tokens_per_frame = feats.shape[3]
        elif feats.shape[3] != self.config.tokens_per_frame:
            raise ValueError(f"media: {feats.shape[3]} tokens per frame, but this model was built for "
                             f"{self.config.tokens_per_frame} (tokens_per_frame)")
        return self.project(feats.to(self.projector[0].weight.dtype)), frame_mask

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Vision features [..., Dv] -> the LM's width [..., D]."""
        return self.projector(feats)

    def max_length(self) -> int | None:
        """The budget in LM tokens per sequence: config.max_length, else the LM's position limit
        (None for relative positions, as T5's)."""
        return self.config.max_length or getattr(self.lm.config, "max_position_embeddings", None)

    def expand(self, input_ids, attention_mask, labels, frame_mask, *, align: str,
               past: torch.Tensor | None = None) -> Expansion:
        """expand_markers with this model's marker, token counts and budget."""
        if frame_mask is None:
            per_item = torch.zeros(input_ids.shape[0], 0, dtype=torch.long, device=input_ids.device)
        else:
            per_item = frame_mask.sum(-1) * self.config.tokens_per_frame  # [B, M]
        pad = getattr(self.lm.config, "pad_token_id", None)
        return expand_markers(input_ids, self.config.media_token_id, per_item, attention_mask=attention_mask,
                              labels=labels, pad_id=pad if isinstance(pad, int) else 0, align=align, past=past,
                              max_length=self.max_length())

    def embed(self, input_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """The LM's input embeddings [B, E, D] with `features` [T, D] written, in order, at the T
        media-token positions of `input_ids` [B, E]. The embedding module's own output (some
        scale it, as Gemma and BART do) is what the text positions get."""
        is_media = input_ids == self.config.media_token_id
        embeds = self.lm.get_input_embeddings()(input_ids.masked_fill(is_media, 0))
        count = int(is_media.sum())
        given = 0 if features is None else features.shape[0]
        if count != given:
            raise ValueError(f"media tokens: {count} in the sequence for {given} projected media tokens")
        if count:
            embeds = embeds.masked_scatter(is_media.unsqueeze(-1), features.to(embeds.dtype))
        return embeds

    @staticmethod
    def kept_features(projected, frame_mask, kept) -> torch.Tensor | None:
        """[T, D]: the projected tokens of the real frames of the items that were spliced in,
        in sequence order (sample, item, frame, token)."""
        if projected is None:
            return None
        return projected[frame_mask & kept.unsqueeze(-1)].flatten(0, 1)

    @staticmethod
    def align_labels(out, labels: torch.Tensor) -> torch.Tensor:
        """The training loop's labels [B, L] laid out like the logits [B, E, V] (`label_positions`)."""
        aligned = torch.full(out.logits.shape[:2], IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
        rows, cols = (out.label_positions >= 0).nonzero(as_tuple=True)
        aligned[rows, out.label_positions[rows, cols]] = labels[rows, cols]
        return aligned

    def context_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B] tokens each sample occupies in the LM's input before any budget: its text, with
        each marker replaced by its item's frames x tokens_per_frame."""
        real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        markers = ((input_ids == self.config.media_token_id) & real).sum(-1)
        frames = frame_mask.sum((1, 2)) if frame_mask is not None else torch.zeros_like(markers)
        return real.sum(-1) - markers + frames * self.config.tokens_per_frame

    @staticmethod
    def check_rows(input_ids, frame_mask) -> None:
        if frame_mask is not None and frame_mask.shape[0] != input_ids.shape[0]:
            raise ValueError(f"input_ids holds {input_ids.shape[0]} sequences but pixel_values/media_features hold "
                             f"media for {frame_mask.shape[0]} samples; give one row of media per sequence (pad "
                             "missing items with frame_mask)")


def measure_tokens(encoder: nn.Module) -> int | None:
    """Tokens per frame of a Hugging Face vision encoder, by running it once on a blank image of
    its configured size; None when it does not say its size."""
    hf = getattr(encoder, "model", None)
    cfg = getattr(getattr(hf, "config", None), "vision_config", None) or getattr(hf, "config", None)
    size, channels = getattr(cfg, "image_size", None), getattr(cfg, "num_channels", 3)
    if not isinstance(size, int):
        return None
    param = next(encoder.parameters())
    with torch.no_grad():
        return encoder(torch.zeros(1, channels, size, size, dtype=param.dtype, device=param.device)).tokens.shape[1]
