import json
import os

import pytest
import torch

import multisense as ms
from multisense.lm.adapters import DECODER_LAYERS
from tests.conftest import VOCAB, interleaved_ids, tiny_flamingo, tiny_lm, tiny_lm_of_type, tiny_vision

MARKER = VOCAB - 1
MODES = ["immediate", "all_previous", "window:2"]


def pixels(batch, media, frames=1, seed=0):
    return torch.randn(batch, media, frames, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_closed_gates_equal_the_frozen_lm_bit_for_bit(arch):
    """Text only, and text with images whose marker is an ordinary token of the LM."""
    model = tiny_flamingo(arch, media_token_id=7)
    lm = tiny_lm(arch)  # an untouched copy of the same LM
    text = interleaved_ids(2, 12, [[], []], marker=MARKER)
    assert torch.equal(model(text).logits, lm(text).logits)
    ids = interleaved_ids(2, 12, [[2, 7], [4, 5]])
    ids[ids == 7] = 8
    ids[0, [2, 7]] = 7
    ids[1, [4, 5]] = 7
    out = model(ids, attention_mask=torch.ones_like(ids), pixel_values=pixels(2, 2))
    assert torch.equal(out.logits, lm(ids, attention_mask=torch.ones_like(ids)).logits)


@pytest.mark.parametrize("model_type", sorted(DECODER_LAYERS))
def test_closed_gates_equal_the_frozen_lm_for_every_model_type_in_the_adapter_table(model_type):
    """Gemma's embedding module scales its rows by sqrt(width): the marker embedding must be taken
    in the module's output space for the marker token to read as the LM reads it."""
    torch.manual_seed(1)
    model = ms.FlamingoModel.from_lm(tiny_lm_of_type(model_type), tiny_vision(), media_token_id=7, num_latents=4,
                                     resampler_depth=1, resampler_heads=2, resampler_dim_head=8, xattn_heads=2,
                                     xattn_dim_head=8, ff_mult=2).eval()
    lm = tiny_lm_of_type(model_type)
    ids = interleaved_ids(2, 12, [[], []])
    ids[ids == 7] = 8
    ids[0, [2, 7]], ids[1, [4, 5]] = 7, 7
    mask = torch.ones_like(ids)
    out = model(ids, attention_mask=mask, pixel_values=pixels(2, 2))
    assert torch.equal(out.logits, lm(ids, attention_mask=mask).logits)


def test_new_marker_token_beyond_the_vocabulary_gets_its_own_trainable_embedding():
    model = tiny_flamingo(media_token_id=VOCAB + 3)
    ids = interleaved_ids(1, 8, [[2]], marker=VOCAB + 3)
    out = model(ids, pixel_values=pixels(1, 1), labels=ids)
    out.loss.backward()
    assert model.marker_embedding.grad.abs().sum() > 0
    assert not model.lm.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize("mode", MODES)
def test_media_k_never_reaches_tokens_before_its_marker(mode):
    model = tiny_flamingo(gates=0.5, mode=mode).eval()
    ids = interleaved_ids(2, 14, [[1, 5, 9], [3, 4, 12]])
    idx = ms.nn.media_index(ids, MARKER)
    pix = pixels(2, 3)
    base = model(ids, pixel_values=pix).logits
    for k in (1, 2, 3):
        changed = pix.clone()
        changed[:, k - 1] = torch.randn_like(changed[:, k - 1])
        out = model(ids, pixel_values=changed).logits
        early = idx < k
        assert torch.equal(out[early], base[early])
        assert not torch.allclose(out[~early], base[~early])


def test_marker_and_media_count_mismatch_raises_naming_the_sample():
    model = tiny_flamingo()
    ids = interleaved_ids(2, 10, [[1, 5], [3]])
    with pytest.raises(ValueError, match=r"sample 1: 1 markers for 2 media"):
        model(ids, pixel_values=pixels(2, 2))
    with pytest.raises(ValueError, match=r"sample 0: 2 markers for 0 media"):
        model(ids)


def test_padding_media_through_frame_mask():
    model = tiny_flamingo(gates=0.5).eval()
    ids = interleaved_ids(2, 10, [[1, 5], [3]])
    mask = torch.tensor([[[True], [True]], [[True], [False]]])
    pix = pixels(2, 2)
    out = model(ids, pixel_values=pix, frame_mask=mask).logits
    alone = model(ids[1:], pixel_values=pix[1:, :1]).logits
    torch.testing.assert_close(out[1:], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="frame_mask: empty"):
        model(ids, pixel_values=pix, frame_mask=torch.tensor([[[True], [True]], [[False], [True]]]))


def test_gradients_reach_only_gates_and_marker_at_init_and_everything_trainable_when_open():
    model = tiny_flamingo(media_token_id=VOCAB + 1)
    ids = interleaved_ids(2, 10, [[1, 6], [2, 3]], marker=VOCAB + 1)
    model(ids, pixel_values=pixels(2, 2), labels=ids).loss.backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name  # the frozen LM and vision encoder never get gradient
        elif name.endswith("alpha") or name == "marker_embedding":
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or not p.grad.any(), name
    assert not any(p.requires_grad for p in model.lm.parameters())
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())

    model.zero_grad(set_to_none=True)
    for b in model.gated_layers:
        b.attn_gate.alpha.data.fill_(0.5)
        b.ff_gate.alpha.data.fill_(0.5)
    model(ids, pixel_values=pixels(2, 2), labels=ids).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_train_mode_keeps_frozen_backbones_in_eval():
    model = tiny_flamingo().train()
    assert model.resampler.training and not model.lm.training and not model.vision_encoder.training


@pytest.mark.parametrize("arch_", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["immediate", "all_previous"])
def test_greedy_generation_with_caches_equals_recomputation_including_a_second_turn(arch_, mode):
    """Turn 1 with unequal media counts (2 images, then 1 and a padding slot); turn 2 one new image each."""
    model = tiny_flamingo(arch_, gates=1.0, mode=mode).eval()
    ids = interleaved_ids(2, 6, [[1, 3], [4]])
    pix1, pix2 = pixels(2, 2, seed=1), pixels(2, 1, seed=2)
    mask1 = torch.tensor([[[True], [True]], [[True], [False]]])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    first = model.generate(ids, pixel_values=pix1, frame_mask=mask1, return_dict_in_generate=True, **kw)
    assert torch.equal(first.sequences, model.generate(ids, pixel_values=pix1, frame_mask=mask1, use_cache=False, **kw))

    follow = torch.cat((first.sequences, interleaved_ids(2, 3, [[1], [1]], seed=5)), dim=1)
    cached = model.generate(follow, pixel_values=pix2, past_key_values=first.past_key_values, **kw)
    # every sample's media in order, its new image right after its own real ones
    both = torch.stack([torch.cat((pix1[0], pix2[0])), torch.cat((pix1[1, :1], pix2[1], pix1[1, 1:]))])
    mask = torch.tensor([[[True], [True], [True]], [[True], [True], [False]]])
    recomputed = model.generate(follow, pixel_values=both, frame_mask=mask, use_cache=False, **kw)
    assert torch.equal(cached, recomputed)
    assert cached.shape[1] == follow.shape[1] + 6


def test_second_turn_logits_with_the_cache_equal_recomputation_when_media_counts_differ():
    model = tiny_flamingo(gates=1.0).eval()
    ids1, ids2 = interleaved_ids(2, 6, [[1, 3], [4]]), interleaved_ids(2, 4, [[1], [1]], seed=3)
    pix1, pix2 = pixels(2, 2, seed=1), pixels(2, 1, seed=2)
    mask1 = torch.tensor([[[True], [True]], [[True], [False]]])
    turn1 = model(ids1, pixel_values=pix1, frame_mask=mask1, use_cache=True)
    turn2 = model(ids2, pixel_values=pix2, past_key_values=turn1.past_key_values).logits
    both = torch.stack([torch.cat((pix1[0], pix2[0])), torch.cat((pix1[1, :1], pix2[1], pix1[1, 1:]))])
    mask = torch.tensor([[[True], [True], [True]], [[True], [True], [False]]])
    whole = model(torch.cat((ids1, ids2), 1), pixel_values=both, frame_mask=mask).logits[:, ids1.shape[1]:]
    torch.testing.assert_close(turn2, whole, rtol=1e-5, atol=1e-5)


def test_second_turn_after_num_return_sequences_takes_one_new_image_per_sample():
    model = tiny_flamingo(gates=1.0).eval()
    ids = interleaved_ids(2, 5, [[0], [2]])
    pix1, pix2 = pixels(2, 1, seed=1), pixels(2, 1, seed=2)
    torch.manual_seed(0)
    first = model.generate(ids, pixel_values=pix1, do_sample=True, num_return_sequences=2, max_new_tokens=3,
                           pad_token_id=0, return_dict_in_generate=True)
    follow = torch.cat((first.sequences, interleaved_ids(4, 2, [[0]] * 4, seed=4)), 1)  # 4 rows: 2 per sample
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    cached = model.generate(follow, pixel_values=pix2, past_key_values=first.past_key_values, **kw)
    both = torch.cat((pix1, pix2), 1).repeat_interleave(2, 0)  # each row's own media, spelled out
    assert torch.equal(cached, model.generate(follow, pixel_values=both, use_cache=False, **kw))


def test_second_turn_after_beam_search_routes_each_new_image_to_its_sample():
    model = tiny_flamingo(gates=1.0).eval()
    ids = interleaved_ids(2, 5, [[0], [2]])
    kw = dict(num_beams=2, max_new_tokens=3, pad_token_id=0)

    def second_turn(pix2):
        first = model.generate(ids, pixel_values=pixels(2, 1, seed=1), return_dict_in_generate=True, **kw)
        follow = torch.cat((first.sequences, interleaved_ids(2, 2, [[0], [0]], seed=4)), 1)
        return model.generate(follow, pixel_values=pix2, past_key_values=first.past_key_values,
                              output_scores=True, return_dict_in_generate=True, **kw)

    pix2 = pixels(2, 1, seed=2)
    changed = pix2.clone()
    changed[1] = torch.randn_like(changed[1])
    a, b = second_turn(pix2), second_turn(changed)
    assert a.sequences.shape == b.sequences.shape == (2, 5 + 3 + 2 + 3)
    assert torch.equal(a.sequences_scores[0], b.sequences_scores[0])  # sample 0 never sees sample 1's image
    assert not torch.equal(a.sequences_scores[1], b.sequences_scores[1])


@pytest.mark.parametrize("texts, images", [(2, 1), (4, 2), (3, 2)])
def test_a_batch_size_mismatch_between_texts_and_media_names_both(texts, images):
    model = tiny_flamingo()
    ids = interleaved_ids(texts, 6, [[1]] * texts)
    match = rf"input_ids holds {texts} sequences but pixel_values/media_features hold media for {images} samples"
    with pytest.raises(ValueError, match=match):
        model(ids, pixel_values=pixels(images, 1))
    with pytest.raises(ValueError, match=match):
        model.generate(ids, pixel_values=pixels(images, 1), max_new_tokens=2, pad_token_id=0)


def test_cross_attn_every_beyond_the_lm_depth_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"cross_attn_every: expected 1 to 2 .* got 4"):
        tiny_flamingo(cross_attn_every=4)


def test_a_wrong_or_empty_frame_mask_is_named():
    model = tiny_flamingo()
    ids = interleaved_ids(1, 6, [[1]])
    with pytest.raises(ValueError, match=r"frame_mask: expected shape \[B=1, M=1, F=2\], got \[1, 2\]"):
        model(ids, pixel_values=pixels(1, 1, frames=2), frame_mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="frame_mask: no frame is marked present"):
        model(ids, pixel_values=pixels(1, 1), frame_mask=torch.zeros(1, 1, 1, dtype=torch.bool))


def test_training_builds_no_cache_and_evaluation_returns_one_that_continues():
    model = tiny_flamingo(gates=0.5)
    ids = interleaved_ids(1, 6, [[1]])
    assert model.train()(ids, pixel_values=pixels(1, 1), labels=ids).past_key_values is None
    out = model.eval()(ids, pixel_values=pixels(1, 1))
    assert isinstance(out.past_key_values, ms.FlamingoCache) and out.past_key_values.get_seq_length() == 6


def test_a_cache_changed_behind_the_model_is_refused():
    model = tiny_flamingo(gates=0.5).eval()
    ids = interleaved_ids(1, 6, [[1]])
    cache = model(ids, pixel_values=pixels(1, 1)).past_key_values
    model.lm(interleaved_ids(1, 2, [[]], seed=3), **{model._cache_argument: cache})  # the LM alone grows it
    with pytest.raises(ValueError, match="changed outside FlamingoModel"):
        model(interleaved_ids(1, 2, [[]], seed=4), past_key_values=cache)


def test_backbones_in_bfloat16_work_and_equal_the_bf16_lm_at_closed_gates():
    """The marker is an ordinary token (7) of the LM, so at closed gates the whole input reads as the LM reads it."""
    lm, vision = tiny_lm().to(torch.bfloat16), tiny_vision().to(torch.bfloat16)
    model = ms.FlamingoModel.from_lm(lm, vision, media_token_id=7, num_latents=4, resampler_depth=1,
                                     resampler_heads=2, resampler_dim_head=8, xattn_heads=2, xattn_dim_head=8).eval()
    assert model.resampler.latents.dtype == torch.float32  # the trainable parts stay float32
    ids = interleaved_ids(2, 8, [[], []])
    ids[ids == 7] = 8
    ids[0, 1], ids[1, 3] = 7, 7
    out = model(ids, pixel_values=pixels(2, 1))
    assert out.logits.dtype == torch.bfloat16
    assert torch.equal(out.logits, tiny_lm().to(torch.bfloat16)(ids).logits)
    for block in model.gated_layers:
        block.attn_gate.alpha.data.fill_(0.5)
    model(ids, pixel_values=pixels(2, 1), labels=ids).loss.backward()
    assert model.resampler.latents.grad is not None and model.resampler.latents.grad.dtype == torch.float32
    assert model.generate(ids, pixel_values=pixels(2, 1), max_new_tokens=3, pad_token_id=0).shape == (2, 11)


def test_media_are_encoded_once_per_generate_call():
    model = tiny_flamingo(gates=1.0).eval()
    calls = []
    model.vision_encoder.register_forward_hook(lambda *a: calls.append(1))
    model.resampler.register_forward_hook(lambda *a: calls.append(2))
    model.generate(interleaved_ids(1, 5, [[0]]), pixel_values=pixels(1, 1), max_new_tokens=5, do_sample=False,
                   pad_token_id=0)
    assert calls == [1, 2]


def test_generate_accepts_transformers_keywords():
    model = tiny_flamingo(gates=1.0).eval()
    ids = interleaved_ids(1, 5, [[0]])
    out = model.generate(ids, pixel_values=pixels(1, 1), max_new_tokens=4, do_sample=True, top_k=5,
                         num_return_sequences=3, pad_token_id=0)
    assert out.shape == (3, 9)


def test_save_and_load_round_trip_gives_equal_logits(tmp_path):
    model = tiny_flamingo(gates=0.3).eval()
    lm_dir, vis_dir = tmp_path / "lm", tmp_path / "vision"
    model.lm.save_pretrained(lm_dir)
    model.vision_encoder.model.save_pretrained(vis_dir)
    model.lm.config._name_or_path = str(lm_dir)
    model.config.lm["name_or_path"] = str(lm_dir)
    model.config.vision["name_or_path"] = str(vis_dir)
    with torch.no_grad():
        for p in model.resampler.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "model.safetensors"):  # safetensors alone would leave 0600
        assert (tmp_path / "ckpt" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    loaded = ms.FlamingoModel.from_pretrained(tmp_path / "ckpt").eval()
    ids = interleaved_ids(2, 10, [[1, 6], [2, 3]])
    pix = pixels(2, 2)
    assert torch.equal(loaded(ids, pixel_values=pix).logits, model(ids, pixel_values=pix).logits)


def test_a_two_tower_vision_checkpoint_reloads_its_image_tower_quietly(tmp_path, capfd, caplog):
    import transformers as tf

    clip = tf.CLIPModel(tf.CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                                   "num_attention_heads": 2, "vocab_size": 20},
                                      vision_config={"image_size": 16, "patch_size": 4, "hidden_size": 24,
                                                     "intermediate_size": 48, "num_hidden_layers": 1,
                                                     "num_attention_heads": 2}, projection_dim=8))
    clip.save_pretrained(tmp_path / "clip")
    vision = ms.encoders.load_vision_encoder(tmp_path / "clip").eval()
    torch.manual_seed(1)
    model = ms.FlamingoModel.from_lm(tiny_lm(), vision, media_token_id=VOCAB - 1, num_latents=4, resampler_depth=1,
                                     resampler_heads=2, resampler_dim_head=8, xattn_heads=2, xattn_dim_head=8).eval()
    for block in model.gated_layers:
        block.attn_gate.alpha.data.fill_(0.5)
    model.save_pretrained(tmp_path / "ckpt")
    capfd.readouterr()
    caplog.clear()
    loaded = ms.FlamingoModel.from_pretrained(tmp_path / "ckpt", lm=model.lm).eval()
    out, err = capfd.readouterr()
    assert isinstance(loaded.vision_encoder.model, tf.CLIPVisionModel)
    assert "text_model" not in out + err + caplog.text  # no load report listing the text tower's weights
    ids, pix = interleaved_ids(1, 8, [[1]]), pixels(1, 1)
    assert torch.equal(loaded(ids, pixel_values=pix).logits, model(ids, pixel_values=pix).logits)


def test_loading_onto_a_different_lm_or_a_corrupt_file_is_an_error(tmp_path):
    model = tiny_flamingo()
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="lm: its weights differ"):
        ms.FlamingoModel.from_pretrained(tmp_path, lm=tiny_lm(seed=5), vision_encoder=tiny_vision())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        ms.FlamingoModel.from_pretrained(tmp_path, lm=tiny_lm(), vision_encoder=tiny_vision())


def test_config_records_backbone_identity_and_rejects_unknown_keys(tmp_path):
    model = tiny_flamingo()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["lm"]["model_type"] == "gpt2"
    assert set(cfg["lm"]["fingerprint"]) == {"float32", "bfloat16", "float16"}
    assert cfg["vision"]["class"] == "CLIPVisionModel"
    with pytest.raises(ValueError, match="unknown key 'cross_attn_evry'; did you mean 'cross_attn_every'"):
        tiny_flamingo(cross_attn_evry=2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(pixel_values=torch.randn(1, 1, 3, 16, 16)), r"pixel_values: expected shape \[B, M, F, C, H, W\], got \[1, 1, 3, 16, 16\]"),
    (dict(media_features=torch.randn(1, 1, 1, 5, 7)), r"media_features: expected shape \[B, M, F, S, Dv=24\], got \[1, 1, 1, 5, 7\]"),
    (dict(pixel_values=torch.full((1, 1, 1, 3, 16, 16), float("nan"))), "NaN"),
])
def test_bad_media_inputs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_flamingo()(interleaved_ids(1, 6, [[1]]), **kwargs)


def test_standardize_media_centres_and_scales_every_channel_and_survives_save_load(tmp_path):
    model = tiny_flamingo(gates=0.3, standardize_media=True).eval()
    pix, mask = pixels(3, 2, frames=2), torch.tensor([[[1, 1], [1, 0]]] * 3, dtype=torch.bool)
    raw = model.encode_frames(pix, mask)[mask]  # the real frames' tokens [N, S, Dv]
    model.calibrate_media([{"pixel_values": pix[:2], "frame_mask": mask[:2]},
                           {"pixel_values": pix[2:], "frame_mask": mask[2:]}])
    flat = raw.flatten(0, 1).double()
    torch.testing.assert_close(model.media_mean.double(), flat.mean(0), rtol=1e-5, atol=1e-5)
    standardised = (flat - model.media_mean.double()) / model.media_std.double()
    torch.testing.assert_close(standardised.mean(0), torch.zeros_like(standardised[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std(0, unbiased=False), torch.ones_like(standardised[0]), atol=1e-3, rtol=0)
    # the resampler sees the standardised features: same latents as feeding them by hand
    ids = interleaved_ids(1, 8, [[1, 4]])
    feats = model.encode_frames(pix[:1], None)
    by_hand = (feats - model.media_mean) / model.media_std
    assert torch.equal(model.encode_media(pixel_values=pix[:1])[0], model.resampler(by_hand))
    # statistics are saved with the trainable weights and restored
    model.lm.save_pretrained(tmp_path / "lm")
    model.vision_encoder.model.save_pretrained(tmp_path / "vision")
    model.config.lm["name_or_path"], model.config.vision["name_or_path"] = str(tmp_path / "lm"), str(tmp_path / "vision")
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ms.FlamingoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(loaded.media_std, model.media_std)
    assert torch.equal(loaded(ids, pixel_values=pix[:1]).logits, model(ids, pixel_values=pix[:1]).logits)


def test_standardize_media_keeps_closed_gates_equal_to_the_lm_and_needs_the_option():
    model = tiny_flamingo(standardize_media=True)
    model.calibrate_media([{"pixel_values": pixels(2, 1)}])
    ids = interleaved_ids(1, 8, [[2]], marker=MARKER)
    assert torch.equal(model(ids, pixel_values=pixels(1, 1)).logits, tiny_lm()(ids).logits)
    with pytest.raises(ValueError, match="standardize_media"):
        tiny_flamingo().calibrate_media([{"pixel_values": pixels(2, 1)}])


def test_calibration_checks_its_batches_like_forward():
    model = tiny_flamingo(standardize_media=True)
    bad = pixels(1, 1)
    bad[0, 0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.calibrate_media([{"pixel_values": bad}])
    with pytest.raises(ValueError, match="exactly one of pixel_values and media_features"):
        model.calibrate_media([{"frame_mask": torch.ones(1, 1, 1, dtype=torch.bool)}])
    assert torch.equal(model.media_std, torch.ones_like(model.media_std))  # nothing half-set


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_same_lm_reloaded_in_lower_precision_is_accepted_another_is_not(tmp_path, dtype):
    import transformers as tf

    lm_dir, vis_dir = tmp_path / "lm", tmp_path / "vision"
    tiny_lm().save_pretrained(lm_dir)
    tiny_vision().save_pretrained(vis_dir)
    lm, vision = tf.AutoModelForCausalLM.from_pretrained(lm_dir), tf.CLIPVisionModel.from_pretrained(vis_dir)
    model = ms.FlamingoModel.from_lm(lm, vision, media_token_id=MARKER, num_latents=4, resampler_depth=1,
                                     resampler_heads=2, resampler_dim_head=8, xattn_heads=2, xattn_dim_head=8)
    model.save_pretrained(tmp_path / "ckpt")
    low = tf.AutoModelForCausalLM.from_pretrained(lm_dir, dtype=dtype)
    loaded = ms.FlamingoModel.from_pretrained(tmp_path / "ckpt", lm=low)
    assert next(loaded.lm.parameters()).dtype == dtype
    other = tiny_lm(seed=5).to(dtype)
    with pytest.raises(ValueError, match="lm: its weights differ"):
        ms.FlamingoModel.from_pretrained(tmp_path / "ckpt", lm=other)


def test_checkpoints_record_absolute_backbone_paths_and_load_from_another_directory(tmp_path, monkeypatch):
    import transformers as tf

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    tiny_lm().save_pretrained("lm")
    tiny_vision().save_pretrained("vision")
    model = ms.FlamingoModel.from_lm(tf.AutoModelForCausalLM.from_pretrained("lm"),
                                     tf.CLIPVisionModel.from_pretrained("vision"), media_token_id=MARKER,
                                     num_latents=4, resampler_depth=1, resampler_heads=2, resampler_dim_head=8,
                                     xattn_heads=2, xattn_dim_head=8)
    model.save_pretrained("ckpt")
    cfg = json.loads((tmp_path / "work" / "ckpt" / "config.json").read_text())
    assert cfg["lm"]["name_or_path"] == str(tmp_path / "work" / "lm")
    assert cfg["vision"]["name_or_path"] == str(tmp_path / "work" / "vision")
    monkeypatch.chdir(tmp_path)
    ms.FlamingoModel.from_pretrained("work/ckpt")
    (tmp_path / "work" / "lm").rename(tmp_path / "work" / "gone")
    with pytest.raises(ValueError, match=r"lm: the checkpoint records '.*work/lm', which is not a directory here"):
        ms.FlamingoModel.from_pretrained("work/ckpt")


def test_save_pretrained_keeps_the_tokenizer_with_its_marker(tmp_path):
    import transformers as tf

    from multisense.data.tokenizer import train_word_tokenizer

    tok = train_word_tokenizer(["a red circle ."])
    lm = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok) + 1))
    lm.save_pretrained(tmp_path / "lm")
    lm = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    model = ms.FlamingoModel.from_lm(lm, tiny_vision(), tokenizer=tok, num_latents=4, resampler_depth=1,
                                     resampler_heads=2, resampler_dim_head=8, xattn_heads=2, xattn_dim_head=8)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ms.FlamingoModel.from_pretrained(tmp_path / "ckpt", vision_encoder=model.vision_encoder)
    assert loaded.tokenizer.convert_tokens_to_ids("<image>") == model.config.media_token_id
    reread = tf.AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert reread("<image> a")["input_ids"][0] == model.config.media_token_id


# ---------------------------------------------------------------------------------- media_latents


def test_media_latents_equal_the_resampler_producing_them():
    """Already-resampled media skip the encoder and resampler: the same latents give the same logits,
    padding items included (media_mask plays frame_mask's part)."""
    model = tiny_flamingo(gates=0.5).eval()
    ids = interleaved_ids(2, 10, [[1, 5], [3]])
    mask = torch.tensor([[[True], [True]], [[True], [False]]])
    pix = pixels(2, 2)
    out = model(ids, pixel_values=pix, frame_mask=mask, output_media_latents=True)
    again = model(ids, media_latents=out.media_latents, media_mask=mask.any(-1))
    assert torch.equal(again.logits, out.logits)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, media_latents=out.media_latents, media_mask=mask.any(-1), **kw),
                       model.generate(ids, pixel_values=pix, frame_mask=mask, **kw))
    with pytest.raises(ValueError, match="one kind of media"):
        model(ids, pixel_values=pix, media_latents=out.media_latents)
    with pytest.raises(ValueError, match=r"media_latents: expected shape \[B, M, R, D=24\]"):
        model(ids, media_latents=torch.randn(2, 2, 4, 7))
    with pytest.raises(ValueError, match="media_mask: empty"):
        model(ids, media_latents=out.media_latents, media_mask=torch.tensor([[True, True], [False, True]]))


def test_a_model_without_a_resampler_takes_media_latents_only_and_has_no_dead_weights():
    with_resampler = tiny_flamingo(gates=0.5).eval()
    torch.manual_seed(1)
    bare = ms.FlamingoModel.from_lm(tiny_lm(), media_token_id=MARKER, resampler_depth=0, dim_media=24, xattn_heads=2,
                                    xattn_dim_head=8, ff_mult=2).eval()
    assert bare.resampler is None and not any(k.startswith("resampler.") for k in bare.trainable_state_dict())
    bare.load_state_dict({k: v for k, v in with_resampler.trainable_state_dict().items()
                          if not k.startswith("resampler.")}, strict=False)
    ids = interleaved_ids(2, 10, [[1, 5], [3, 4]])
    pix = pixels(2, 2)
    out = with_resampler(ids, pixel_values=pix, output_media_latents=True)
    assert torch.equal(bare(ids, media_latents=out.media_latents).logits, out.logits)
    with pytest.raises(ValueError, match="no resampler .* pass already-resampled media as media_latents"):
        bare(ids, media_features=torch.randn(2, 2, 1, 5, 24))
    with pytest.raises(ValueError, match="resampler_depth=0: .* a vision_encoder would go unused"):
        ms.FlamingoModel.from_lm(tiny_lm(), tiny_vision(), media_token_id=MARKER, resampler_depth=0)


def test_added_words_beyond_the_vocabulary_read_trainable_embeddings_and_carry_no_loss():
    """A word the LM's tokenizer could only read as unknown, added after its vocabulary (the
    embedded LMs have no "finger"): its own trainable input embedding, never a target."""
    new = [VOCAB, VOCAB + 2]  # the marker is VOCAB + 1
    model = tiny_flamingo(media_token_id=VOCAB + 1, added_token_ids=new, gates=0.5)
    ids = interleaved_ids(2, 10, [[1], [2]], marker=VOCAB + 1)
    ids[0, 4], ids[1, 6] = new
    out = model(ids, pixel_values=pixels(2, 1), labels=ids)  # labels on the added ids: ignored, not an error
    out.loss.backward()
    assert model.added_embeddings.shape == (2, 32) and model.added_embeddings.grad.abs().sum(-1).gt(0).all()
    changed = ids.clone()
    changed[0, 4] = VOCAB + 2  # another added word reads another embedding, once they differ
    with torch.no_grad():
        model.added_embeddings[1] += 1.0
    assert not torch.equal(model(changed, pixel_values=pixels(2, 1)).logits[0, 4:],
                           model(ids, pixel_values=pixels(2, 1)).logits[0, 4:])
    with pytest.raises(ValueError, match="added_token_ids: expected distinct ids beyond the LM's vocabulary"):
        tiny_flamingo(added_token_ids=[5])
