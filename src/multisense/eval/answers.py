"""Greedy answers for a list of samples, and the metrics over them.

`generate_answers` runs a model of any family on prompts with their media, or with `text_only=True`
the frozen language model alone on the same prompts stripped of media markers: the baseline
that shows how much of a score comes from looking.
"""

from __future__ import annotations

import torch

from ..data.collate import Sample, collate
from ..models.scoring import is_encoder_decoder
from ..tokens import MEDIA_MARKER as MARKER


@torch.no_grad()
def generate_answers(model, tokenizer, samples: list[Sample], *, text_only: bool = False, batch_size: int = 128,
                     max_new_tokens: int = 16) -> list[str]:
    """Greedy continuation of each sample's prompt, decoded up to end-of-sequence."""
    was_training = model.training
    model.eval()
    answers: list[str] = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        if text_only:
            chunk = [Sample(" ".join(s.prompt.replace(MARKER, " ").split()), s.target) for s in chunk]
        batch = collate(chunk, tokenizer, for_generation=True, seq2seq=is_encoder_decoder(model))
        generator = model.lm if text_only else model
        out = generator.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        # a family's generate returns the prompt and then the answer; a bare encoder-decoder LM the
        # decoder's start token and then the answer
        start = 1 if text_only and is_encoder_decoder(generator) else batch["input_ids"].shape[1]
        answers += tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)
    model.train(was_training)
    return [" ".join(a.split()) for a in answers]


def exact_match(predictions: list[str], targets: list[str]) -> float:
    """Share of predictions equal to their target after whitespace normalisation."""
    if len(predictions) != len(targets):
        raise ValueError(f"predictions: {len(predictions)} for {len(targets)} targets")
    hits = sum(" ".join(p.split()) == " ".join(t.split()) for p, t in zip(predictions, targets))
    return hits / max(1, len(targets))
