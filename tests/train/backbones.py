"""Tiny backbones saved in Hugging Face format, for tests of commands that load from directories."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from multisense.data import tasks
from multisense.data.tokenizer import train_word_tokenizer


def save_tiny_backbones(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random 2-layer GPT-2 with a word tokenizer over every task word, and a 1-layer CLIP
    vision tower at 32 pixels; returns (lm_dir, vision_dir). Beside them, root/t5: a random
    2+2-layer T5 with the same tokenizer (`save_tiny_t5`)."""
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
    save_tiny_t5(root / "t5", tok, seed)
    return lm_dir, vision_dir


def save_tiny_t5(directory: Path, tok, seed: int = 0) -> Path:
    """A random T5 (2 encoder and 2 decoder layers, width 32) over `tok`, saved with it."""
    torch.manual_seed(seed)
    t5 = tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id))
    t5.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
