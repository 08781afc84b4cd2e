"""Tiny Hugging Face models built from configs (no downloads) shared by the tests."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

VOCAB = 64

TINY_LMS = {
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128,
                                                      vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)),
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                        num_attention_heads=4, num_key_value_heads=2,
                                                        vocab_size=VOCAB, max_position_embeddings=128,
                                                        bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                        num_attention_heads=4, num_key_value_heads=2,
                                                        vocab_size=VOCAB, max_position_embeddings=128,
                                                        bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "gpt_neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64,
                                                               num_hidden_layers=2, num_attention_heads=4,
                                                               vocab_size=VOCAB, max_position_embeddings=128,
                                                               bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "opt": lambda: tf.OPTForCausalLM(tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                                  num_attention_heads=4, vocab_size=VOCAB, word_embed_proj_dim=32,
                                                  max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                                                  pad_token_id=0)),
}


# Every model type of the adapter table (multisense.lm.adapters.DECODER_LAYERS), from a tiny
# config: the common sizes, plus what each type needs to fit them.
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, max_position_embeddings=128, head_dim=8, pad_token_id=0, bos_token_id=1,
               eos_token_id=2)
_PER_TYPE = {"gptj": dict(rotary_dim=4), "codegen": dict(rotary_dim=4), "falcon": dict(head_dim=None),
             "opt": dict(ffn_dim=64, word_embed_proj_dim=32), "mixtral": dict(num_local_experts=2)}


def tiny_lm_of_type(model_type: str, seed: int = 0, attn_implementation: str | None = None,
                    **config) -> torch.nn.Module:
    """A tiny causal LM of any model type in the adapter table, random weights, eval mode."""
    values = {k: v for k, v in {**_COMMON, **_PER_TYPE.get(model_type, {}), **config}.items() if v is not None}
    torch.manual_seed(seed)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return tf.AutoModelForCausalLM.from_config(tf.AutoConfig.for_model(model_type, **values), **kw).eval()


def tiny_lm(arch: str = "gpt2", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TINY_LMS[arch]().eval()


def tiny_vision(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = tf.CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=24, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=48)
    return tf.CLIPVisionModel(cfg).eval()


def tiny_flamingo(arch: str = "gpt2", *, media_token_id: int = VOCAB - 1, gates: float | None = None, **overrides):
    """A FlamingoModel on a tiny LM and CLIP vision tower; `gates` opens every tanh gate to that alpha."""
    import multisense as ms

    kw = dict(num_latents=4, resampler_depth=1, resampler_heads=2, resampler_dim_head=8, xattn_heads=2,
              xattn_dim_head=8, ff_mult=2)
    kw.update(overrides)
    torch.manual_seed(1)
    model = ms.FlamingoModel.from_lm(tiny_lm(arch), tiny_vision(), media_token_id=media_token_id, **kw)
    if gates is not None:
        for block in model.gated_layers:
            block.attn_gate.alpha.data.fill_(gates)
            block.ff_gate.alpha.data.fill_(gates)
    return model


def interleaved_ids(batch: int, length: int, marker_positions: list[list[int]], seed: int = 0,
                    marker: int = VOCAB - 1) -> torch.Tensor:
    """Random text ids (never the marker, never special ids 0-2) with markers at the given positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, marker, (batch, length), generator=g)
    for b, positions in enumerate(marker_positions):
        ids[b, positions] = marker
    return ids


@pytest.fixture(params=sorted(TINY_LMS))
def arch(request) -> str:
    return request.param


def tiny_t5(seed: int = 0, model_type: str = "t5") -> torch.nn.Module:
    """A tiny encoder-decoder (T5 or mT5) LM, random weights, eval mode; pad 0 starts the decoder."""
    torch.manual_seed(seed)
    config = tf.AutoConfig.for_model(model_type, vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                     num_decoder_layers=2, num_heads=4, dropout_rate=0.0, pad_token_id=0,
                                     eos_token_id=2, decoder_start_token_id=0)
    return tf.AutoModelForSeq2SeqLM.from_config(config).eval()
