"""The embedded language models and their shared word tokenizer.

- `pretrain_lm`: a tiny GPT-2 (4 layers x 128) on the procedural language: captions and
  questions about scenes, the tasks' episodes with their media described in words, and lines of
  colours and shapes in order. It is the demo's frozen LM.
- `pretrain_icl_lm`: a tiny Llama (2 layers x 64) on long few-shot episodes in words only, until
  it has an induction head ("after the token seen before, the token that followed it"), which
  in-context learning needs and the short GPT-2 pretraining never forms. The `fewshot` preset's LM.

Lines are packed whole into rows of BLOCK tokens. Shape letters: N rows, T tokens per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ..data.scenes import order_line
from ..data.scenes import text_corpus as scenes_corpus
from ..data.tasks import VOCABULARY as TASK_VOCABULARY
from ..data.tasks import FewShotMapped
from ..data.tasks import text_corpus as tasks_corpus
from ..data.tokenizer import train_word_tokenizer
from ..tokens import IGNORE_INDEX
from .pretraining import pretrain, save

BLOCK = 128  # tokens per packed row
LM_STEPS = 700
LM_BATCH = 16
ICL_STEPS = 1500


def pretrain_corpus(n: int, seed: int) -> list[str]:
    """The GPT-2's text: scenes lines (captions, Q&A) and task lines (few-shot episodes,
    comparisons, directions, digits and sums with the media described in words), half each, plus
    n / 5 lines of colours and shapes in their fixed order (`scenes.order_line`): the only text
    where the next word depends on which colour came before, which makes the LM tell colour words
    apart (measured: docs/history.md)."""
    rng = np.random.default_rng(seed + 2)
    lines = scenes_corpus(n // 2, seed) + tasks_corpus(n - n // 2, seed + 1) + [order_line(rng) for _ in range(n // 5)]
    order = np.random.default_rng(seed).permutation(len(lines))
    return [lines[i] for i in order]


def default_tokenizer() -> PreTrainedTokenizerBase:
    """The word tokenizer every embedded LM shares (deterministic: the same ids on every build)."""
    return train_word_tokenizer(pretrain_corpus(4096, seed=0), extra_words=TASK_VOCABULARY)


def packed_rows(tokenizer: PreTrainedTokenizerBase, lines: list[str], block: int = BLOCK) -> torch.Tensor:
    """Lines (each + eos) packed whole into rows of `block` tokens, right-padded: [N, T].
    Packing several short lines per row wastes little on padding; starting every row at a line
    start keeps what the LM sees at position 0 the same as in a prompt."""
    rows, row = [], []
    for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]:
        ids = ids[: block - 1] + [tokenizer.eos_token_id]
        if len(row) + len(ids) > block:
            rows.append(row)
            row = []
        row = row + ids
    rows.append(row)
    out = torch.full((len(rows), block), tokenizer.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def lm_batches(tokenizer: PreTrainedTokenizerBase, lines: list[str], *, batch_size: int, seed: int):
    """Endless batches of packed rows drawn at random; no loss on padding."""
    blocks = packed_rows(tokenizer, lines)
    attention = (blocks != tokenizer.pad_token_id).long()
    labels = blocks.masked_fill(attention == 0, IGNORE_INDEX)
    generator = torch.Generator().manual_seed(seed)
    while True:
        rows = torch.randint(len(blocks), (batch_size,), generator=generator)
        yield {"input_ids": blocks[rows], "attention_mask": attention[rows], "labels": labels[rows]}


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def pretrain_lm(tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, *, steps: int = LM_STEPS,
                batch_size: int = LM_BATCH, lr: float = 2e-3, corpus_lines: int = 60_000, seed: int = 0,
                progress: bool = True) -> Path:
    """Train the tiny GPT-2 from scratch on `pretrain_corpus`; saved with its tokenizer."""
    torch.manual_seed(seed)
    # No dropout: the corpus is large and noiseless, dropout would only slow the short training.
    config = GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=256,  # 8-shot episodes reach ~100 tokens
                        embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0, **_special_tokens(tokenizer))
    model = GPT2LMHeadModel(config)
    batches = lm_batches(tokenizer, pretrain_corpus(corpus_lines, seed), batch_size=batch_size, seed=seed)
    summary = pretrain(model, batches, steps=steps, lr=lr, desc="pretraining LM", progress=progress)
    return save(model, tokenizer, out_dir, summary)


def pretrain_icl_lm(tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, *, steps: int = ICL_STEPS,
                    batch_size: int = 128, lr: float = 1e-3, corpus_lines: int = 60_000,
                    attributes: tuple[str, ...] = ("shape",), seed: int = 0, corpus_seed: int = 0,
                    progress: bool = True) -> Path:
    """Train the tiny Llama (rotary positions) on long `fewshot_mapped` episodes in words, one
    attribute per line in turn. `seed` sets the initialisation and the batch order, `corpus_seed`
    the episodes. The summary records its closed-set accuracy in words at 8 shots
    (`in_words_accuracy`, `probes.in_words_accuracy`), which `build.build_icl_lm` checks.

    Whether the lookup forms within the default steps depends on the seed at the same recipe,
    which is why the build checks it; at higher learning rates, or on colours, it stops at copying
    *some* label present in the context (measured: docs/history.md)."""
    from .probes import in_words_accuracy  # evaluation builds on the training code: imported where used

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=256, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                         **_special_tokens(tokenizer))
    model = LlamaForCausalLM(config)
    tasks, rng = [FewShotMapped(attribute=a) for a in attributes], np.random.default_rng(corpus_seed)
    lines = [tasks[i % len(tasks)].text_line(rng) for i in range(corpus_lines)]
    batches = lm_batches(tokenizer, lines, batch_size=batch_size, seed=seed)
    summary = pretrain(model, batches, steps=steps, lr=lr, desc="pretraining in-context LM", progress=progress)
    summary["seed"] = seed
    summary["in_words_accuracy"] = in_words_accuracy(model, tokenizer, tasks[0])
    return save(model, tokenizer, out_dir, summary)
