"""The embedded encoder-decoder: a tiny T5 (mT5's gated-GELU layout; its output layer shares the
embeddings, which transformers 5 ties for every T5, with mT5's unscaled decoder output, what
`tie_word_embeddings=False` still selects there) that PaLI's demo and experiments start from,
pretrained as mT5 is, on monolingual text only.

Its text is `data.languages.text_corpus`: captions and questions with answers in the three
invented languages, each line in one language; no line pairs two languages, so whatever it knows
of translation it learns later, from the translation pairs PaLI trains on. The objective is T5's
span corruption (Raffel et al. 2020): about 15% of a line's words, in spans of about 3, are each
replaced by a sentinel `<extra_id_k>`, and the decoder writes the sentinels followed by what
they hid. Its tokenizer is the three languages' word tokenizer plus the sentinels.

Shape letters: N lines in a batch, L input length, T target length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration

from ..data.languages import text_corpus, train_tokenizer
from ..tokens import IGNORE_INDEX
from .pretraining import pretrain, save

T5_STEPS = 1200
T5_BATCH = 64
SENTINELS = tuple(f"<extra_id_{k}>" for k in range(8))
NOISE = 0.15  # share of a line's words hidden
MEAN_SPAN = 3.0


def t5_tokenizer() -> PreTrainedTokenizerBase:
    """The multilingual word tokenizer plus T5's sentinels (deterministic: the same ids every build)."""
    tokenizer = train_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SENTINELS)})
    return tokenizer


def corrupt_spans(ids: list[int], rng: np.random.Generator, sentinel_ids: list[int]) -> tuple[list[int], list[int]]:
    """(input, target) of one line's token ids under span corruption: spans of about MEAN_SPAN
    tokens covering about NOISE of the line (at least one token, at most len(sentinel_ids) spans)
    are each replaced by the next sentinel in the input; the target lists each sentinel followed
    by the tokens it hid."""
    n = len(ids)
    hidden = max(1, round(n * NOISE))
    spans = min(len(sentinel_ids), max(1, round(hidden / MEAN_SPAN)), hidden)
    # span lengths: `hidden` split into `spans` positive parts; starts: spread over the rest
    cuts = np.sort(rng.choice(np.arange(1, hidden), spans - 1, replace=False)) if spans > 1 else np.array([], int)
    lengths = np.diff(np.concatenate([[0], cuts, [hidden]]))
    gaps = np.sort(rng.choice(np.arange(n - hidden + 1), spans, replace=False)) if n - hidden + 1 >= spans else \
        np.zeros(spans, dtype=int)
    source, target, pos = [], [], 0
    for k, (gap, length) in enumerate(zip(gaps, lengths)):
        start = gap + lengths[:k].sum()  # the k-th span begins after k earlier spans and `gap` kept tokens
        source += ids[pos:start] + [sentinel_ids[k]]
        target += [sentinel_ids[k]] + ids[start:start + length]
        pos = start + length
    return source + ids[pos:], target


def denoising_batches(tokenizer: PreTrainedTokenizerBase, lines: list[str], *, batch_size: int, seed: int):
    """Endless seq2seq batches of corrupted lines drawn at random: input_ids / attention_mask
    [N, L], labels [N, T] (the target plus eos, IGNORE_INDEX after)."""
    encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
    sentinel_ids = tokenizer.convert_tokens_to_ids(list(SENTINELS))
    rng = np.random.default_rng(seed)
    while True:
        pairs = [corrupt_spans(encoded[i], rng, sentinel_ids) for i in rng.integers(len(encoded), size=batch_size)]
        L, T = max(len(s) for s, _ in pairs), max(len(t) for _, t in pairs) + 1
        ids = torch.full((batch_size, L), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, T), IGNORE_INDEX, dtype=torch.long)
        for b, (s, t) in enumerate(pairs):
            ids[b, :len(s)] = torch.tensor(s)
            labels[b, :len(t) + 1] = torch.tensor(t + [tokenizer.eos_token_id])
        yield {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long(), "labels": labels}


def pretrain_t5(out_dir: str | Path, *, steps: int = T5_STEPS, batch_size: int = T5_BATCH, lr: float = 2e-3,
                corpus_lines: int = 40_000, seed: int = 0, progress: bool = True) -> Path:
    """Train the tiny T5 from scratch by span corruption on `text_corpus`; saved with its tokenizer."""
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    # mT5's layout at a demo's size; no dropout (as the other embedded backbones: a short, noiseless run)
    config = T5Config(vocab_size=len(tokenizer), d_model=128, d_kv=32, num_heads=4, d_ff=256, num_layers=2,
                      num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    model = T5ForConditionalGeneration(config)
    batches = denoising_batches(tokenizer, text_corpus(corpus_lines, seed), batch_size=batch_size, seed=seed)
    summary = pretrain(model, batches, steps=steps, lr=lr, desc="pretraining T5", progress=progress)
    return save(model, tokenizer, out_dir, summary)
