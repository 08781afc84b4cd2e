"""Activation checkpointing of the frozen LM's layers (`lm.inject.checkpoint_layers`)."""

import pytest
import torch

import multisense as ms
from multisense.lm.adapters import find_decoder_layers
from multisense.lm.inject import checkpoint_layers
from tests.conftest import VOCAB, interleaved_ids, tiny_lm_of_type, tiny_vision

MARKER = VOCAB - 1


def _model(model_type: str, attn: str | None):
    lm = tiny_lm_of_type(model_type, attn_implementation=attn)
    torch.manual_seed(1)
    model = ms.FlamingoModel.from_lm(lm, tiny_vision(), media_token_id=MARKER, num_latents=4, resampler_depth=1,
                                     resampler_heads=2, resampler_dim_head=8, xattn_heads=2, xattn_dim_head=8)
    for block in model.gated_layers:
        block.attn_gate.alpha.data.fill_(0.5)
        block.ff_gate.alpha.data.fill_(0.5)
    return model.train()


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model_type, attn", [("gpt2", None), ("llama", "sdpa"), ("llama", "eager")])
def test_checkpointing_a_right_padded_batch_gives_the_gradients_of_no_checkpointing(model_type, attn):
    model = _model(model_type, attn)
    ids = interleaved_ids(2, 10, [[1], [2]])
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding, as the training collator makes it
    labels = ids.masked_fill(mask == 0, -100)
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels,
                 pixel_values=torch.randn(2, 1, 1, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    plain = _grads(model, batch)
    handle = checkpoint_layers(find_decoder_layers(model.lm)[1])
    try:
        ckpt = _grads(model, batch)
    finally:
        handle.remove()
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointed_layers_refuse_a_kv_cache_while_computing_gradients():
    model = _model("gpt2", None)
    ids = interleaved_ids(1, 6, [[1]])
    handle = checkpoint_layers(find_decoder_layers(model.lm)[1])
    try:
        with pytest.raises(ValueError, match="use_cache=False"):
            model(ids, pixel_values=torch.randn(1, 1, 1, 3, 16, 16), labels=ids, use_cache=True)
    finally:
        handle.remove()
