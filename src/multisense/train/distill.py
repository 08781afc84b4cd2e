"""In-words distillation: make each image read, to the frozen LM, like the word that names it.

The teacher is the frozen LM itself reading the same episode in words (`Document.words`: every
media marker replaced by one word, so the two sequences align token for token); the student is
the Flamingo model reading the images. The loss is the squared error between their hidden
states at the media markers, at every layer input and the output, relative to the teacher's
squared norm, averaged over layers. It needs no labels, and it teaches the gated blocks what to
write at a marker, which the next-token loss alone does not.

Why the markers only: compared at every token, the loss also punishes whatever the opening
gates change in the text after an image, and training closed the gates instead and left the
marker states no closer to the right word than chance. At the markers only, the marker states
name the class and few-shot accuracy rises with shots (measured: docs/history.md). The text
after a marker is the LM's business: it reads the marker like the word, and the next-token loss
still covers it.

Shape letters: B batch, L tokens, D LM width.
"""

from __future__ import annotations

import torch
from torch import nn

from . import distributed


def hidden_state_distance(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...],
                          keep: torch.Tensor) -> torch.Tensor:
    """Mean over layers of sum |s - t|^2 / sum |t|^2 over the positions where `keep` [B, L] is
    true; each state [B, L, D]. Zero when no position is kept."""
    if len(student) != len(teacher):
        raise ValueError(f"hidden states: {len(student)} from the student, {len(teacher)} from the teacher")
    keep = keep.unsqueeze(-1).to(teacher[0].dtype)  # [B, L, 1]
    terms = [((s.float() - t.float()) ** 2 * keep).sum() / ((t.float() ** 2) * keep).sum().clamp(min=1e-12)
             for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


class InWordsDistillation(distributed.ObjectiveWrapper):
    """Wraps a plain FlamingoModel (for DDP or FSDP2, wrap this objective, `distributed.wrap`):
    forward takes the usual batch plus `words_input_ids` [B, L] and returns the model's output
    with `aux_loss` = weight * distance at the media markers.

    The teacher pass calls the model's LM directly; it runs inside this objective's forward, so
    under FSDP2 (this objective the root) the LM's shards are gathered for it too."""

    def __init__(self, model: nn.Module, weight: float):
        if weight <= 0:
            raise ValueError(f"weight: expected > 0, got {weight}")
        super().__init__(model)
        self.weight = weight

    def forward(self, words_input_ids: torch.Tensor, **batch):
        out = self.model(**batch, output_hidden_states=True)
        with torch.no_grad():  # the LM outside the model's media context: the plain frozen LM
            teacher = self.model.lm(input_ids=words_input_ids, attention_mask=batch["attention_mask"],
                                    output_hidden_states=True).hidden_states
        markers = batch["input_ids"] == self.model.config.media_token_id  # [B, L]
        out.aux_loss = self.weight * hidden_state_distance(out.hidden_states, teacher, markers)
        return out
