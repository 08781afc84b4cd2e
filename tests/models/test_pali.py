import pytest
import torch
import transformers as tf

import multisense as ms
from multisense.lm.adapters import cache_argument
from multisense.tokens import IGNORE_INDEX
from tests.conftest import VOCAB, interleaved_ids, tiny_lm, tiny_lm_of_type, tiny_t5, tiny_vision

MARKER = VOCAB - 1


def pixels(batch, media=1, frames=1, seed=0):
    return torch.randn(batch, media, frames, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def tiny_pali(lm=None, **overrides):
    torch.manual_seed(1)
    return ms.PaLIModel.from_lm(lm if lm is not None else tiny_t5(), tiny_vision(), media_token_id=MARKER,
                                **overrides).eval()


def answers(batch, length=4, seed=5):
    return torch.randint(3, MARKER, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- encoder-decoder


@pytest.mark.parametrize("model_type", ["t5", "mt5"])
def test_without_media_it_is_the_encoder_decoder_lm(model_type):
    model = tiny_pali(tiny_t5(model_type=model_type))
    ids, labels = interleaved_ids(2, 7, [[], []]), answers(2)
    ours = model(ids, labels=labels).logits
    theirs = model.lm(input_ids=ids, labels=labels).logits
    assert torch.equal(ours, theirs)


def test_the_encoder_reads_the_projected_image_tokens_then_the_prompt():
    model = tiny_pali()
    ids, labels, pix = interleaved_ids(2, 6, [[0], [0]]), answers(2), pixels(2)
    feats = model.vision_encoder(pix.flatten(0, 2)).tokens  # [B, N, Dv], class token dropped
    assert feats.shape[1] == model.config.tokens_per_frame == 16
    embeds = torch.cat([model.projector(feats), model.lm.get_input_embeddings()(ids[:, 1:])], 1)
    expected = model.lm(inputs_embeds=embeds, labels=labels).logits
    torch.testing.assert_close(model(ids, pixel_values=pix, labels=labels).logits, expected, rtol=0, atol=1e-6)
    # bidirectional: the image's tokens see the prompt after them, so the prompt's last word changes them
    enc = model.lm.get_encoder()
    changed = embeds.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(enc(inputs_embeds=embeds).last_hidden_state[:, :16],
                              enc(inputs_embeds=changed).last_hidden_state[:, :16])


def test_a_padded_batch_gives_each_sample_its_own_logits():
    model = tiny_pali()
    short, long_ = interleaved_ids(1, 4, [[0]], seed=1), interleaved_ids(1, 7, [[0]], seed=2)
    la, lb = answers(1, 3, seed=3), answers(1, 5, seed=4)
    pa, pb = pixels(1, seed=1), pixels(1, seed=2)
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    ids[0, :4], mask[0, :4] = short[0], 1
    ids[1], mask[1] = long_[0], 1
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, :3], labels[1] = la[0], lb[0]
    out = model(ids, attention_mask=mask, pixel_values=torch.cat([pa, pb]), labels=labels).logits
    torch.testing.assert_close(out[0, :3], model(short, pixel_values=pa, labels=la).logits[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], model(long_, pixel_values=pb, labels=lb).logits[0], rtol=0, atol=1e-5)


def test_generate_returns_the_prompt_then_the_answer_and_its_cache_equals_recompute():
    model = tiny_pali()
    with torch.no_grad():  # a decoder that does not stop at once
        model.lm.lm_head.weight.add_(torch.randn_like(model.lm.lm_head.weight))
    ids, pix = interleaved_ids(2, 6, [[0], [0]]), pixels(2)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=2)
    cached = model.generate(ids, pixel_values=pix, **kw)
    recomputed = model.generate(ids, pixel_values=pix, use_cache=False, **kw)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached[:, :6], ids) and cached.shape[1] > 6
    # each greedy token is the argmax of a full decoder pass over the answer so far
    answer = cached[:, 6:]
    decoder_in = torch.cat([torch.zeros(2, 1, dtype=torch.long), answer[:, :-1]], 1)
    logits = model(ids, pixel_values=pix, decoder_input_ids=decoder_in).logits
    assert torch.equal(logits.argmax(-1), answer)
    more = model.generate(ids, pixel_values=pix, num_return_sequences=2, num_beams=2, **kw)
    assert more.shape[0] == 4 and torch.equal(more[::2, :6], ids)


def test_decoder_cache_step_by_step_equals_one_pass():
    model = tiny_pali()
    ids, pix, labels = interleaved_ids(1, 5, [[0]]), pixels(1), answers(1, 5)
    decoder_in = torch.cat([torch.zeros(1, 1, dtype=torch.long), labels[:, :-1]], 1)
    whole = model(ids, pixel_values=pix, decoder_input_ids=decoder_in).logits
    enc = model(ids, pixel_values=pix, decoder_input_ids=decoder_in[:, :1], use_cache=True)
    steps, past = [enc.logits], enc.past_key_values
    cache = cache_argument(model.lm)  # the keyword transformers takes it under (renamed in 5.24)
    for t in range(1, decoder_in.shape[1]):
        out = model.lm(encoder_outputs=(enc.encoder_last_hidden_state,), decoder_input_ids=decoder_in[:, t:t + 1],
                       use_cache=True, **{cache: past})
        steps.append(out.logits)
        past = out.past_key_values
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------- prefix-LM


def prefix_batch(seed=0):
    ids = interleaved_ids(1, 6, [[0]], seed=seed)
    answer = answers(1, 4, seed=seed + 7)
    full = torch.cat([ids, answer], 1)
    labels = torch.cat([torch.full_like(ids, IGNORE_INDEX), answer], 1)
    return full, labels, pixels(1, seed=seed)


def takes_4d_mask(lm) -> bool:
    """The LM alone: with a 4-D mask that lets every token see every other, does the first token
    see the second (its output differs from the causal default)?"""
    embeds = torch.randn(1, 2, lm.get_input_embeddings().embedding_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        both = lm(inputs_embeds=embeds, attention_mask=torch.zeros(1, 1, 2, 2)).logits[0, 0]
        causal = lm(inputs_embeds=embeds).logits[0, 0]
    return not torch.allclose(both, causal)


@pytest.mark.parametrize("arch, impl", [("gpt2", "eager"), ("gpt2", "sdpa"), ("llama", "eager"), ("llama", "sdpa")])
def test_prefix_lm_prompt_both_ways_answer_causal(arch, impl):
    lm = tiny_lm_of_type(arch, attn_implementation=impl) if arch != "gpt2" else tiny_lm("gpt2")
    lm.config._attn_implementation = impl
    if not takes_4d_mask(lm):  # transformers 5.0's GPT-2 eager attention adds its own causal mask
        with pytest.raises(ValueError, match="ignores a 4-D attention mask"):
            tiny_pali(lm)
        return
    model = tiny_pali(lm)
    full, labels, pix = prefix_batch()
    n = model.config.tokens_per_frame
    prompt_end = n + 5  # expanded: the image's tokens, then the prompt's 5 words
    base = model(full, pixel_values=pix, labels=labels).logits
    # a later prompt word changes what the image's tokens and the prompt's first word compute
    changed = full.clone()
    changed[0, 5] = (changed[0, 5] + 1 - 3) % (MARKER - 3) + 3
    other = model(changed, pixel_values=pix, labels=labels).logits
    assert not torch.allclose(base[0, :prompt_end - 1], other[0, :prompt_end - 1])
    # an answer token changes nothing before it: the prompt does not see the answer, nor an answer token the next
    for t in range(6, 10):
        changed = full.clone()
        changed[0, t] = (changed[0, t] + 1 - 3) % (MARKER - 3) + 3
        out = model(changed, pixel_values=pix, labels=labels).logits
        e = n - 1 + t  # its expanded position
        torch.testing.assert_close(out[0, :e], base[0, :e], rtol=0, atol=1e-6)
        assert not torch.allclose(out[0, e:], base[0, e:])


def test_prefix_lm_refuses_an_lm_that_ignores_its_attention_mask():
    lm = tiny_lm("gpt2")
    forward = lm.forward
    lm.forward = lambda *args, attention_mask=None, **kwargs: forward(*args, **kwargs)  # always causal
    with pytest.raises(ValueError, match=r"lm: this gpt2 \(.* attention\) ignores a 4-D attention mask"):
        tiny_pali(lm)


def test_prefix_lm_all_answer_is_the_causal_lm_and_block_causal_masks():
    from multisense.nn.masks import prefix_lm_mask

    model = tiny_pali(tiny_lm("llama"))
    ids = interleaved_ids(2, 7, [[], []])
    labels = ids.clone()  # every token labelled: every token starts a causal block
    assert torch.equal(model(ids, labels=labels).logits, model.lm(input_ids=ids).logits)
    ar = torch.tensor([[0, 0, 1, 0, 1, 1]])  # block-causal: [0 1] [2 3] [4] [5]
    expected = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(prefix_lm_mask(ar)[0], expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prefix_lm_padding_and_generation_equal_recompute(arch):
    model = tiny_pali(tiny_lm(arch))
    with torch.no_grad():
        out_layer = model.lm.get_output_embeddings().weight
        out_layer.add_(torch.randn_like(out_layer))
    a, la, pa = prefix_batch(seed=1)
    b, lb, pb = prefix_batch(seed=2)
    b, lb = b[:, :8], lb[:, :8]  # a shorter answer: right padding in the batch
    ids = torch.zeros(2, 10, dtype=torch.long)
    mask = torch.zeros(2, 10, dtype=torch.long)
    labels = torch.full((2, 10), IGNORE_INDEX)
    ids[0], mask[0], labels[0] = a[0], 1, la[0]
    ids[1, :8], mask[1, :8], labels[1, :8] = b[0], 1, lb[0]
    out = model(ids, attention_mask=mask, pixel_values=torch.cat([pa, pb]), labels=labels)
    single = model(b, pixel_values=pb, labels=lb)
    E = single.logits.shape[1]
    torch.testing.assert_close(out.logits[1, :E], single.logits[0], rtol=0, atol=1e-5)
    # generation (left-padded prompts, cache) equals recomputing each step with the prefix mask
    prompts = torch.zeros(2, 6, dtype=torch.long)
    pmask = torch.zeros(2, 6, dtype=torch.long)
    prompts[0], pmask[0] = a[0, :6], 1
    prompts[1, 1:], pmask[1, 1:] = b[0, :5], 1  # one word shorter, left-padded
    prompts[1, 1] = MARKER
    pix = torch.cat([pa, pb])
    got = model.generate(prompts, attention_mask=pmask, pixel_values=pix, max_new_tokens=5, do_sample=False,
                         pad_token_id=0)
    for row, start in ((0, 0), (1, 1)):
        seq = got[row:row + 1, start:6]
        for t in range(5):
            lab = torch.full_like(seq, IGNORE_INDEX)
            lab[:, 6 - start:] = seq[:, 6 - start:]
            logits = model(seq, pixel_values=pix[row:row + 1], labels=lab).logits
            assert int(logits[0, -1].argmax()) == int(got[row, 6 + t])
            seq = torch.cat([seq, got[row:row + 1, 6 + t:7 + t]], 1)


# ---------------------------------------------------------------------------------- training, save/load


def test_everything_trains_by_default_and_freezing_is_an_option():
    model = tiny_pali().train()
    ids, labels, pix = interleaved_ids(2, 6, [[0], [0]]), answers(2), pixels(2)
    model(ids, pixel_values=pix, labels=labels).loss.backward()
    for part in (model.lm, model.vision_encoder, model.projector):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters() if p.requires_grad)
        assert any(p.requires_grad for p in part.parameters())
    frozen = tiny_pali(freeze_vision=True, freeze_lm=True).train()
    assert not frozen.lm.training and not frozen.vision_encoder.training
    assert set(frozen.trainable_state_dict()) == {k for k, _ in frozen.projector.named_parameters(prefix="projector")}
    frozen(ids, pixel_values=pix, labels=labels).loss.backward()
    assert all(p.grad is None for p in frozen.lm.parameters())
    assert all(p.grad is None for p in frozen.vision_encoder.parameters())


@pytest.mark.parametrize("frozen", [False, True])
def test_save_load_round_trip_through_automodel(tmp_path, frozen):
    lm_dir, vision_dir = tmp_path / "t5", tmp_path / "clip"
    tiny_t5().save_pretrained(lm_dir)
    tiny_vision().save_pretrained(vision_dir)
    lm = tf.T5ForConditionalGeneration.from_pretrained(lm_dir)
    vision = tf.CLIPVisionModel.from_pretrained(vision_dir)
    model = ms.PaLIModel.from_lm(lm, vision, media_token_id=MARKER, freeze_lm=frozen, freeze_vision=frozen).eval()
    with torch.no_grad():  # trained: every trainable weight moves
        for p in model.trainable_state_dict().values():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "model")
    if not frozen:  # trained backbones are in the checkpoint: their directories are not needed
        for d in (lm_dir, vision_dir):
            for f in d.iterdir():
                f.unlink()
    loaded = ms.AutoModel.from_pretrained(tmp_path / "model").eval()
    assert isinstance(loaded, ms.PaLIModel)
    ids, labels, pix = interleaved_ids(2, 6, [[0], [0]]), answers(2), pixels(2)
    assert torch.equal(loaded(ids, pixel_values=pix, labels=labels).logits,
                       model(ids, pixel_values=pix, labels=labels).logits)
    # tied weights stay tied after loading
    assert loaded.lm.lm_head.weight.data_ptr() == loaded.lm.get_input_embeddings().weight.data_ptr()


def test_errors_name_what_is_wrong():
    model = tiny_pali()
    ids = interleaved_ids(2, 6, [[0], []])
    with pytest.raises(ValueError, match="sample 1: 0 markers for 1 media items"):
        model(ids, pixel_values=pixels(2), labels=answers(2))
    with pytest.raises(ValueError, match="input_ids holds 2 sequences but pixel_values"):
        model(interleaved_ids(2, 6, [[0], [0]]), pixel_values=pixels(1), labels=answers(2))
    with pytest.raises(ValueError, match="past_key_values"):
        model.generate(ids[:1], pixel_values=pixels(1), past_key_values=object())
    with pytest.raises(ValueError, match="media_token_id: required"):
        ms.PaLIModel(tiny_t5(), tiny_vision(), ms.PaLIConfig())


def test_standardized_media_are_measured_once_and_saved(tmp_path):
    model = tiny_pali(standardize_media=True)
    pix = pixels(4, seed=9)
    model.calibrate_media([{"pixel_values": pix, "frame_mask": torch.ones(4, 1, 1, dtype=torch.bool)}])
    feats = model.vision_encoder(pix.flatten(0, 2)).tokens.flatten(0, 1)
    torch.testing.assert_close(model.media_mean.float(), feats.mean(0), rtol=0, atol=1e-4)
    ids, labels = interleaved_ids(1, 6, [[0]]), answers(1)
    standard = (model.vision_encoder(pix[:1].flatten(0, 2)).tokens - model.media_mean) / model.media_std
    embeds = torch.cat([model.projector(standard), model.lm.get_input_embeddings()(ids[:, 1:])], 1)
    torch.testing.assert_close(model(ids, pixel_values=pix[:1], labels=labels).logits,
                               model.lm(inputs_embeds=embeds, labels=labels).logits, rtol=0, atol=1e-5)
    assert {"media_mean", "media_std"} <= set(model.trainable_state_dict())
    model.save_pretrained(tmp_path / "m")
    loaded = ms.AutoModel.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.media_std, model.media_std)
    with pytest.raises(ValueError, match="standardize_media=False"):
        tiny_pali().calibrate_media([])


def test_over_the_embedded_t5_and_tower_a_multilingual_batch_trains_and_generates():
    import numpy as np

    from multisense import backbones
    from multisense.data.collate import collate
    from multisense.data.tasks import get_task
    from multisense.encoders import load_vision_encoder

    found = backbones.Backbones.at()
    tokenizer = tf.AutoTokenizer.from_pretrained(found.t5)
    model = ms.PaLIModel.from_lm(tf.AutoModelForSeq2SeqLM.from_pretrained(found.t5),
                                 load_vision_encoder(str(found.vision)), tokenizer=tokenizer)
    assert model.is_encoder_decoder and model.config.tokens_per_frame == 64  # 32 px, 4-px patches
    task = get_task("multilingual", translation=0.5)
    samples = [task.episode(np.random.default_rng(i), 0, "train") for i in range(4)]
    batch = collate(samples, tokenizer, seq2seq=True)
    labels = batch.pop("labels")
    out = model(**batch, labels=labels)
    assert out.logits.shape == (*labels.shape, model.lm.config.vocab_size) and torch.isfinite(out.loss)
    prompts = collate(samples, tokenizer, seq2seq=True, for_generation=True)
    generated = model.eval().generate(**prompts, max_new_tokens=5, do_sample=False)
    L = prompts["input_ids"].shape[1]
    assert torch.equal(generated[:, :L], prompts["input_ids"]) and 1 <= generated.shape[1] - L <= 5
