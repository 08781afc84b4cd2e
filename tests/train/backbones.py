"""Tiny backbones saved in Hugging Face format, for tests of commands that load from directories."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from multisense.data import tasks
from multisense.data.tokenizer import train_word_tokenizer


def save_tiny_backbones(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random 2-layer GPT-2 with a word tokenizer over every task word, and a 1-layer CLIP
    vision tower at 32 pixels; returns (lm_dir, vision_dir)."""
    tok = train_word_tokenizer([" ".join(tasks.VOCABULARY)], extra_words=tasks.VOCABULARY)
    torch.manual_seed(seed)
    lm = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=512, vocab_size=len(tok),
                                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id))
    vision = tf.CLIPVisionModel(tf.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=24,
                                                    num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=48))
    lm_dir, vision_dir = root / "lm", root / "vision"
    lm.save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    vision.save_pretrained(vision_dir)
    return lm_dir, vision_dir
