import warnings

import pytest
import torch
import transformers as tf

import multisense as ms
from multisense.tokens import IGNORE_INDEX
from tests.conftest import VOCAB, interleaved_ids, tiny_lm, tiny_vision

MARKER = VOCAB - 1


def pixels(batch, media, frames=1, seed=0):
    return torch.randn(batch, media, frames, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def tiny_llava(arch="gpt2", **overrides):
    torch.manual_seed(1)
    return ms.LlavaModel.from_lm(tiny_lm(arch), tiny_vision(), media_token_id=MARKER, **overrides).eval()


def tiny_hf_llava(strategy="default", layer=-2, text="llama"):
    torch.manual_seed(0)
    vision = tf.CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=24, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=48)
    texts = {"llama": tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
                                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
             "qwen2": tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
                                     bos_token_id=1, eos_token_id=2, pad_token_id=0)}
    config = tf.LlavaConfig(vision_config=vision, text_config=texts[text], image_token_id=MARKER,
                            vision_feature_select_strategy=strategy, vision_feature_layer=layer)
    return tf.LlavaForConditionalGeneration(config).eval()


def repeat_markers(ids, n):
    """Hugging Face's input convention: each image marker repeated n times (its processor's job)."""
    return torch.nn.utils.rnn.pad_sequence(
        [torch.cat([t.repeat(n) if t == MARKER else t.view(1) for t in row]) for row in ids], batch_first=True)


@pytest.mark.parametrize("strategy, layer, text", [("default", -2, "llama"), ("full", -1, "qwen2"),
                                                   ("default", [-2, -1], "llama")])
def test_imported_hf_llava_gives_its_logits_and_its_greedy_generation(strategy, layer, text):
    hf = tiny_hf_llava(strategy, layer, text)
    ours = ms.LlavaModel.from_hf_llava(hf).eval()
    n = ours.config.tokens_per_frame
    assert n == (16 if strategy == "default" else 17)
    ids = interleaved_ids(2, 8, [[1], [3]])
    pix = pixels(2, 1, seed=3)
    theirs = hf(input_ids=repeat_markers(ids, n), pixel_values=pix[:, 0, 0]).logits
    mine = ours(ids, pixel_values=pix).logits
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    # LlavaModel never generates its image token (it would need an image); Hugging Face's may
    expected = hf.generate(input_ids=repeat_markers(ids, n), pixel_values=pix[:, 0, 0], suppress_tokens=[MARKER], **kw)
    got = ours.generate(ids, pixel_values=pix, **kw)
    assert torch.equal(got[:, ids.shape[1]:], expected[:, ids.shape[1] + n - 1:])
    assert torch.equal(got[:, :ids.shape[1]], ids)  # the prompt as the caller wrote it


def test_export_to_hf_llava_gives_the_same_logits():
    ours = ms.LlavaModel.from_hf_llava(tiny_hf_llava())
    with torch.no_grad():
        for p in ours.projector.parameters():
            p.add_(0.1 * torch.randn_like(p))  # trained weights, not the imported ones
    back = ours.to_hf_llava()
    ids, pix = interleaved_ids(1, 6, [[2]]), pixels(1, 1)
    n = ours.config.tokens_per_frame
    torch.testing.assert_close(back(input_ids=repeat_markers(ids, n), pixel_values=pix[:, 0, 0]).logits,
                               ours(ids, pixel_values=pix).logits, rtol=1e-5, atol=1e-6)


def test_export_names_what_hugging_face_llava_cannot_hold():
    with pytest.raises(ValueError, match=r"to_hf_llava: projector='linear'"):
        tiny_llava(projector="linear").to_hf_llava()


def test_each_marker_becomes_its_image_tokens_and_labels_skip_them():
    model = tiny_llava()
    ids = interleaved_ids(2, 6, [[1, 3], [4]])
    mask = torch.tensor([[[True], [True]], [[True], [False]]])
    out = model(ids, pixel_values=pixels(2, 2), frame_mask=mask, labels=ids)
    n = model.config.tokens_per_frame
    assert out.logits.shape == (2, 6 - 2 + 2 * n, VOCAB)
    assert out.labels.shape == out.logits.shape[:2]
    assert (out.labels == IGNORE_INDEX).sum(-1).tolist() == [2 * n, n + (n - 1)]  # sample 1: n image, n-1 padding
    assert torch.equal(ms.LlavaModel.align_labels(out, ids), out.labels)  # what the training loop builds
    # the loss is the LM's own on the expanded sequence
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), out.labels[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected)


def test_padding_and_batching_leave_each_samples_logits_unchanged():
    model = tiny_llava("llama")
    ids = interleaved_ids(2, 6, [[1, 3], [4]])
    pix, mask = pixels(2, 2, seed=1), torch.tensor([[[True], [True]], [[True], [False]]])
    batch = model(ids, pixel_values=pix, frame_mask=mask)
    for b in range(2):
        alone = model(ids[b:b + 1], pixel_values=pix[b:b + 1, :int(mask[b].sum())])
        length = alone.logits.shape[1]
        torch.testing.assert_close(batch.logits[b, :length], alone.logits[0], rtol=1e-5, atol=1e-5)


def test_a_marker_media_count_mismatch_raises_the_flamingo_error_text():
    model = tiny_llava()
    with pytest.raises(ValueError, match=r"sample 0: 2 markers for 1 media items"):
        model(interleaved_ids(1, 6, [[1, 3]]), pixel_values=pixels(1, 1))
    flamingo = ms.FlamingoModel.from_lm(tiny_lm(), tiny_vision(), media_token_id=MARKER, num_latents=4,
                                        resampler_depth=1, resampler_heads=2, resampler_dim_head=8, xattn_heads=2,
                                        xattn_dim_head=8)
    with pytest.raises(ValueError, match=r"sample 0: 2 markers for 1 media items"):
        flamingo(interleaved_ids(1, 6, [[1, 3]]), pixel_values=pixels(1, 1))


def test_the_budget_drops_whole_images_and_says_so():
    model = tiny_llava()
    n = model.config.tokens_per_frame
    ids = interleaved_ids(1, 8, [[1, 5]])
    pix = pixels(1, 2)
    full = model(ids, pixel_values=pix)
    budget = 5 + n + n // 2  # ends inside the second image's tokens
    model.config.max_length = budget
    with pytest.warns(UserWarning, match=r"max_length=\d+: dropped .*sample 0: \d+ tokens including media items \[1\]"):
        cut = model(ids, pixel_values=pix)
    assert cut.logits.shape[1] == 4 + n  # the 4 text tokens before the second marker and the first image, whole
    torch.testing.assert_close(cut.logits[0], full.logits[0, :4 + n])
    assert (cut.label_positions[0, 5:] == -1).all()


def test_generation_with_the_cache_equals_recomputation_including_a_second_turn():
    """Turn 1 with unequal media counts (2 images, then 1 and a padding slot); turn 2 one new image each."""
    for arch in ("gpt2", "llama"):
        model = tiny_llava(arch)
        ids = interleaved_ids(2, 6, [[1, 3], [4]])
        pix1, pix2 = pixels(2, 2, seed=1), pixels(2, 1, seed=2)
        mask1 = torch.tensor([[[True], [True]], [[True], [False]]])
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        first = model.generate(ids, pixel_values=pix1, frame_mask=mask1, return_dict_in_generate=True, **kw)
        assert torch.equal(first.sequences, model.generate(ids, pixel_values=pix1, frame_mask=mask1,
                                                           use_cache=False, **kw))
        follow = torch.cat((first.sequences, interleaved_ids(2, 3, [[1], [1]], seed=5)), dim=1)
        cached = model.generate(follow, pixel_values=pix2, past_key_values=first.past_key_values, **kw)
        both = torch.stack([torch.cat((pix1[0], pix2[0])), torch.cat((pix1[1, :1], pix2[1], pix1[1, 1:]))])
        mask = torch.tensor([[[True], [True], [True]], [[True], [True], [False]]])
        assert torch.equal(cached, model.generate(follow, pixel_values=both, frame_mask=mask, use_cache=False, **kw))
        assert cached.shape == (2, follow.shape[1] + 6)


def test_second_turn_logits_with_the_cache_equal_recomputation():
    model = tiny_llava("llama")
    ids1, ids2 = interleaved_ids(2, 6, [[1, 3], [4]]), interleaved_ids(2, 4, [[1], [1]], seed=3)
    pix1, pix2 = pixels(2, 2, seed=1), pixels(2, 1, seed=2)
    mask1 = torch.tensor([[[True], [True]], [[True], [False]]])
    turn1 = model(ids1, pixel_values=pix1, frame_mask=mask1, use_cache=True)
    turn2 = model(ids2, pixel_values=pix2, past_key_values=turn1.past_key_values)
    both = torch.stack([torch.cat((pix1[0], pix2[0])), torch.cat((pix1[1, :1], pix2[1], pix1[1, 1:]))])
    mask = torch.tensor([[[True], [True], [True]], [[True], [True], [False]]])
    whole = model(torch.cat((ids1, ids2), 1), pixel_values=both, frame_mask=mask)
    text = ids2 != MARKER  # every text token of turn 2, wherever each run laid it out
    for b in range(2):
        mine = turn2.logits[b, turn2.label_positions[b][text[b]]]
        theirs = whole.logits[b, whole.label_positions[b, 6:][text[b]]]
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_num_return_sequences_and_a_cache_after_beam_search():
    model = tiny_llava()
    ids, pix = interleaved_ids(2, 5, [[0], [2]]), pixels(2, 1, seed=1)
    torch.manual_seed(0)
    out = model.generate(ids, pixel_values=pix, do_sample=True, num_return_sequences=2, max_new_tokens=3,
                         pad_token_id=0)
    assert out.shape == (4, 5 + 3) and torch.equal(out[:, :5], ids.repeat_interleave(2, 0))
    beams = model.generate(ids, pixel_values=pix, num_beams=2, max_new_tokens=3, pad_token_id=0,
                           return_dict_in_generate=True)
    follow = torch.cat((beams.sequences, interleaved_ids(2, 2, [[0], [0]], seed=4)), 1)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(follow, pixel_values=pixels(2, 1, seed=2), past_key_values=beams.past_key_values,
                       max_new_tokens=2, pad_token_id=0)


def test_a_history_that_does_not_begin_with_the_cached_tokens_is_refused():
    model = tiny_llava()
    ids, pix = interleaved_ids(1, 5, [[0]]), pixels(1, 1)
    first = model.generate(ids, pixel_values=pix, max_new_tokens=2, pad_token_id=0, return_dict_in_generate=True)
    wrong = first.sequences.clone()
    wrong[0, 2] = (wrong[0, 2] + 1) % MARKER
    with pytest.raises(ValueError, match="must begin with the"):
        model.generate(wrong, past_key_values=first.past_key_values, max_new_tokens=2, pad_token_id=0)


def test_only_the_projector_trains_and_with_lora_the_adapters_too():
    model = tiny_llava().train()
    ids = interleaved_ids(2, 6, [[1], [2]])
    model(ids, pixel_values=pixels(2, 1), labels=ids).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {n for n, _ in model.projector.named_parameters(prefix="projector")}
    lora = tiny_llava("llama", lora_rank=4).train()
    lora(ids, pixel_values=pixels(2, 1), labels=ids).loss.backward()
    grads = {n for n, p in lora.named_parameters() if p.grad is not None}
    assert any("lora_A" in n for n in grads) and all(n.startswith("projector.") or "lora_" in n for n in grads)
    assert set(lora.trainable_state_dict()) >= grads


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_save_and_load_round_trip_gives_equal_logits(tmp_path, lora_rank):
    lm_dir, vision_dir = tmp_path / "lm", tmp_path / "vision"
    tiny_lm("llama").save_pretrained(lm_dir)
    tiny_vision().save_pretrained(vision_dir)
    lm = tf.AutoModelForCausalLM.from_pretrained(lm_dir)
    vision = tf.CLIPVisionModel.from_pretrained(vision_dir)
    model = ms.LlavaModel.from_lm(lm, vision, media_token_id=MARKER, lora_rank=lora_rank).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # LoRA's B starts at zero: make the adapters count
    ids, pix = interleaved_ids(2, 6, [[1], [2]]), pixels(2, 1)
    expected = model(ids, pixel_values=pix).logits
    model.save_pretrained(tmp_path / "run")
    again = ms.LlavaModel.from_pretrained(tmp_path / "run").eval()
    assert again.config.lora_rank == lora_rank
    assert torch.equal(again(ids, pixel_values=pix).logits, expected)
    assert any("lora_" in k for k in again.trainable_state_dict()) == (lora_rank > 0)


def test_a_wrong_cache_type_is_named():
    model = tiny_llava()
    with pytest.raises(ValueError, match="past_key_values: expected a multisense.models.llava.LlavaCache"):
        model(interleaved_ids(1, 4, [[]]), past_key_values=tf.DynamicCache())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation of the cache keyword reaches the user
        model(interleaved_ids(1, 4, [[1]]), pixel_values=pixels(1, 1))


def test_lora_dropout_applies_in_training_only():
    model = tiny_llava("llama", lora_rank=4, lora_dropout=0.5)
    for m in model.modules():  # adapters that change the output (peft starts lora_B at zero)
        if hasattr(m, "lora_B"):
            torch.nn.init.normal_(m.lora_B["default"].weight)
    ids = interleaved_ids(2, 6, [[0], [0]])
    model.train()
    torch.manual_seed(0)
    a = model(ids, pixel_values=pixels(2, 1)).logits
    b = model(ids, pixel_values=pixels(2, 1)).logits
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(ids, pixel_values=pixels(2, 1)).logits, model(ids, pixel_values=pixels(2, 1)).logits)


def test_a_model_imported_from_a_directory_saves_and_reloads_with_its_tokenizer(tmp_path):
    from multisense.data.tokenizer import train_word_tokenizer

    hf = tiny_hf_llava()
    tok = train_word_tokenizer(["a b c"], vocabulary=[f"w{i}" for i in range(VOCAB - 8)])
    hf.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    ours = ms.LlavaModel.from_hf_llava(tmp_path / "hf").eval()
    assert ours.tokenizer is not None
    ours.save_pretrained(tmp_path / "ckpt")
    again = ms.AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    ids, pix = interleaved_ids(2, 6, [[1], [2]]), pixels(2, 1)
    assert torch.equal(again(ids, pixel_values=pix).logits, ours(ids, pixel_values=pix).logits)
    assert again.tokenizer is not None and len(again.tokenizer) == len(ours.tokenizer)
