"""One contract for every registered family (transformers' common model tests and timm's tests
over `list_models` are the models): each family of `models.registry.FAMILIES` runs every check
below on tiny configs, through the paths `multisense train` (`train.loop.fit`), `multisense eval`
(`eval.fewshot`) and `generate` actually take. A family that registers without a case here fails
`test_every_registered_family_has_a_case`; a property a family cannot meet is named in its
registry entry (`Family.limits`), and the suite checks that it refuses cleanly instead.

Relations, not golden numbers: equals the frozen LM, equals itself alone in a batch, equals
recompute, equals the reloaded copy, unchanged by a later token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
import transformers as tf

import multisense as ms
from multisense.config import FamilyConfig
from multisense.data.collate import Sample, collate
from multisense.data.tokenizer import train_word_tokenizer
from multisense.encoders import ForceTorqueEncoder, TactileEncoder
from multisense.eval.fewshot import _target_scores
from multisense.eval.touch import sequence_log_likelihood
from multisense.models.registry import FAMILIES
from multisense.models.scoring import is_encoder_decoder
from multisense.tokens import IGNORE_INDEX
from multisense.train.loop import fit

WORDS = "a red blue green cat dog bird sits runs on the mat left right what is it".split()
IMAGE = 32  # pixels of the tiny vision tower
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def tokenizer():
    return train_word_tokenizer([" ".join(WORDS)], vocabulary=WORDS)


def causal_lm(arch: str, tok, impl: str, seed: int = 0):
    torch.manual_seed(seed)
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
               eos_token_id=tok.eos_token_id)
    if arch == "gpt2":
        config = tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256, **NO_DROPOUT, **ids)
    else:
        config = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=256, **ids)
    config._attn_implementation = impl
    return tf.AutoModelForCausalLM.from_config(config, attn_implementation=impl).eval()


def t5(tok, seed: int = 0):
    torch.manual_seed(seed)
    return tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id)).eval()


def vision(seed: int = 0):
    torch.manual_seed(seed)
    return tf.CLIPVisionModel(tf.CLIPVisionConfig(image_size=IMAGE, patch_size=16, hidden_size=24, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=48)).eval()


def saved(module, directory, tok=None, dtype=torch.float32):
    """The module reloaded from a local directory (the identity a checkpoint records is a path),
    in `dtype` as transformers loads it (rotary tables stay float32)."""
    module.save_pretrained(directory)
    if tok is not None:
        tok.save_pretrained(directory)
    kind = tf.AutoModelForSeq2SeqLM if getattr(module.config, "is_encoder_decoder", False) else \
        tf.CLIPVisionModel if isinstance(module, tf.CLIPVisionModel) else tf.AutoModelForCausalLM
    kw = {"attn_implementation": module.config._attn_implementation} if kind is not tf.CLIPVisionModel else {}
    return kind.from_pretrained(directory, dtype=dtype, **kw).eval()


FUSION_SENSORS = {"touch": {"encoder": "tactile", "dim": 16, "depth": 1, "num_tokens": 2},
                  "wrist": {"encoder": "force_torque", "dim": 16}}
FUSION_SIZES = dict(sensors=FUSION_SENSORS, dim=32, num_latents=4, depth=1, heads=2, dim_head=8, cross_dim_head=8,
                    xattn_heads=2, xattn_dim_head=8)


@dataclass
class Case:
    """One way to build a family on tiny backbones, and how its inputs are laid out."""

    family: str
    name: str
    build: object  # (root directory, attention implementation, backbone dtype) -> (model, tokenizer)
    impls: tuple[str, ...] = ("eager", "sdpa")
    sensors: bool = False  # media are fused sensors (fusion), not pixel_values
    # a prompt without media is the frozen LM's at initialisation: True, or False where the family
    # refuses such a prompt, or None where it is not the LM (a prefix-LM reads its prompt both ways)
    text_only: bool | None = True
    closed_at_init: bool = False  # at initialisation the media do not change the output

    def __repr__(self):
        return self.name


def _flamingo(arch):
    def build(root, impl, dtype=torch.float32):
        tok = tokenizer()
        lm = saved(causal_lm(arch, tok, impl), root / "lm", tok, dtype)
        enc = saved(vision(), root / "vision", dtype=dtype)
        torch.manual_seed(1)
        return ms.FlamingoModel.from_lm(lm, enc, tokenizer=tok, num_latents=4, resampler_depth=1, resampler_heads=2,
                                        resampler_dim_head=8, xattn_heads=2, xattn_dim_head=8, ff_mult=2), tok
    return build


def _llava(root, impl, dtype=torch.float32):
    tok = tokenizer()
    lm = saved(causal_lm("gpt2", tok, impl), root / "lm", tok, dtype)
    enc = saved(vision(), root / "vision", dtype=dtype)
    torch.manual_seed(1)
    return ms.LlavaModel.from_lm(lm, enc, tokenizer=tok), tok


def _pali(kind):
    def build(root, impl, dtype=torch.float32):
        tok = tokenizer()
        lm = t5(tok) if kind == "t5" else causal_lm("gpt2", tok, impl)
        lm = saved(lm, root / "lm", tok, dtype)
        enc = saved(vision(), root / "vision", dtype=dtype)
        torch.manual_seed(1)
        return ms.PaLIModel.from_lm(lm, enc, tokenizer=tok), tok
    return build


def _fusion(root, impl, dtype=torch.float32):
    tok = tokenizer()
    lm = saved(causal_lm("gpt2", tok, impl), root / "lm", tok, dtype)
    torch.manual_seed(1)
    return ms.FusionModel(ms.FusionConfig(**FUSION_SIZES), lm=lm, tokenizer=tok), tok


CASES = [
    Case("flamingo", "flamingo-gpt2", _flamingo("gpt2"), closed_at_init=True),
    Case("flamingo", "flamingo-llama", _flamingo("llama"), closed_at_init=True),
    Case("llava", "llava-gpt2", _llava),
    Case("pali", "pali-t5", _pali("t5"), impls=("eager",)),
    Case("pali", "pali-prefix-gpt2", _pali("gpt2"), impls=("sdpa",), text_only=None),
    Case("fusion", "fusion-lm-gpt2", _fusion, sensors=True, text_only=False, closed_at_init=True),
]
PARAMS = [pytest.param((c, impl), id=f"{c.name}-{impl}") for c in CASES for impl in c.impls]


def test_every_registered_family_has_a_case():
    assert sorted(FAMILIES) == sorted({c.family for c in CASES}), \
        "a registered family needs a Case here, so the whole contract runs on it"


# ------------------------------------------------------------------------------------ inputs


def samples(seed: int, n: int = 3, media: bool = True) -> list[Sample]:
    """Prompt -> answer samples of different lengths, one image each (or none)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words = [WORDS[j] for j in torch.randint(0, len(WORDS), (3 + 2 * i,), generator=g)]
        answer = " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (2 + i % 2,), generator=g))
        image = [torch.rand(1, 3, IMAGE, IMAGE, generator=g)] if media else []
        out.append(Sample(("<image> " if media else "") + " ".join(words), answer, image))
    return out


def sensor_inputs(seeds: list[int]) -> dict:
    """Each row's sensors drawn from its own seed (the encoders train in float32, whatever the LM's)."""
    rows = [{"touch": TactileEncoder.example(1, 0.1, seed=s), "wrist": ForceTorqueEncoder.example(1, 0.2, seed=s)}
            for s in seeds]
    return {name: {k: torch.cat([r[name][k] for r in rows]) for k in rows[0][name]} for name in rows[0]}


def batch_of(case: Case, model, tok, rows: list[Sample], *, generation: bool = False, seeds=None) -> dict:
    """The collated batch the trainer and the evaluator build (labels unless for generation)."""
    batch = collate(rows, tok, for_generation=generation, seq2seq=is_encoder_decoder(model))
    if case.sensors:
        batch.pop("pixel_values", None), batch.pop("frame_mask", None)
        batch["sensors"] = sensor_inputs(seeds if seeds is not None else list(range(len(rows))))
    return batch




def perturbed(model, scale: float = 0.5, seed: int = 0):
    """Every trainable weight moved at random: open gates, a projector that differs from its init,
    a model that is no longer its frozen LM (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)
    return model


def run(model, batch: dict):
    """The model's output on a labelled batch as training and evaluation run it."""
    from multisense.models.scoring import scored_forward

    labels = batch["labels"]
    rest = {k: v for k, v in batch.items() if k != "labels"}
    return scored_forward(model, rest, labels)


def answer_logprobs(model, batch) -> torch.Tensor:
    """[B, L'] log-probability of each label (0 where there is none), on the scored path."""
    from multisense.models.scoring import label_layout

    with torch.no_grad():
        out, labels = run(model, batch)
    logits = out.logits.float()
    if label_layout(model).shift_labels:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return [row[k] for row, k in zip(logp * keep, keep)]


@pytest.fixture
def built(request, tmp_path):
    case, impl = request.param
    model, tok = case.build(tmp_path, impl)
    return case, model.eval(), tok, tmp_path


params = pytest.mark.parametrize("built", PARAMS, indirect=True)


# ------------------------------------------------------------------------------------ the contract


@params
def test_a_prompt_without_media_is_the_frozen_lm(built):
    case, model, tok, _ = built
    rows = samples(0, media=False)
    batch = batch_of(case, model, tok, rows)
    if case.text_only is None:
        pytest.skip(f"{case.name}: not the causal LM on a prompt (it reads the prompt both ways)")
    if not case.text_only:
        with pytest.raises(ValueError):
            run(model, batch)
        return
    with torch.no_grad():
        ours = run(model, batch)[0].logits
        lm = model.lm
        if is_encoder_decoder(model):
            theirs = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"]).logits
        else:
            theirs = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool() if not is_encoder_decoder(model) else batch["labels"] != IGNORE_INDEX
    torch.testing.assert_close(ours[real], theirs[real], rtol=0, atol=1e-5)


@params
def test_closed_at_initialisation_the_media_change_nothing(built):
    case, model, tok, _ = built
    if not case.closed_at_init:
        pytest.skip(f"{case.family} trains its media path from the first step (not closed at init)")
    a = batch_of(case, model, tok, samples(0), seeds=[0, 1, 2])
    b = batch_of(case, model, tok, samples(0), seeds=[5, 6, 7])
    if "pixel_values" in b:
        b["pixel_values"] = torch.rand_like(b["pixel_values"])
    with torch.no_grad():
        assert torch.equal(run(model, a)[0].logits, run(model, b)[0].logits)
        perturbed(model)
        assert not torch.equal(run(model, a)[0].logits, run(model, b)[0].logits)


@params
def test_no_answer_token_sees_a_later_one_on_the_training_and_evaluation_path(built):
    """Change the answer's last token: the log-probabilities of every earlier answer token stay
    (a prefix-LM trained with its answer visible fails here)."""
    case, model, tok, _ = built
    perturbed(model)
    rows = samples(1)
    changed = [Sample(r.prompt, " ".join(r.target.split()[:-1] + ["bird" if r.target.split()[-1] != "bird"
                                                                  else "cat"]), r.media) for r in rows]
    a = answer_logprobs(model, batch_of(case, model, tok, rows))
    b = answer_logprobs(model, batch_of(case, model, tok, changed))
    for x, y in zip(a, b):  # the last two scored tokens: the changed word and eos
        torch.testing.assert_close(x[:-2], y[:-2], rtol=0, atol=1e-5)
        assert not torch.allclose(x[-2:], y[-2:])


@params
def test_the_training_loss_is_the_evaluators_loss(built):
    case, model, tok, _ = built
    perturbed(model)
    rows = samples(2)
    batch = batch_of(case, model, tok, rows)
    loglik, _, tokens = _target_scores(model, tok, rows, [r.target for r in rows]) if not case.sensors else \
        _sensor_scores(model, batch)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    history = fit(model, iter([batch]), steps=1, optimizer=optimizer, progress=False, max_grad_norm=None)
    torch.testing.assert_close(history[0]["loss"], (-loglik.sum() / tokens.sum()).item(), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def _sensor_scores(model, batch):
    """What `multisense eval` computes for a fusion model (`eval.touch.answer_scores`): the
    sensors fused once, the LM scored directly over the latents, not through the model's forward."""
    media = model.fuse(batch["sensors"]).unsqueeze(1)
    logits = model.flamingo(batch["input_ids"], attention_mask=batch["attention_mask"], media_latents=media,
                            use_cache=False).logits
    loglik = sequence_log_likelihood(logits, batch["labels"])
    return loglik, None, (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)


@params
def test_each_row_of_a_batch_is_scored_as_if_alone(built):
    case, model, tok, _ = built
    perturbed(model)
    rows = samples(3)
    together = answer_logprobs(model, batch_of(case, model, tok, rows, seeds=[0, 1, 2]))
    for i, row in enumerate(rows):
        alone = answer_logprobs(model, batch_of(case, model, tok, [row], seeds=[i]))[0]
        torch.testing.assert_close(together[i], alone, rtol=0, atol=1e-5)


def _generate(case, model, tok, rows, seeds=None, **kw):
    batch = batch_of(case, model, tok, rows, generation=True, seeds=seeds)
    kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": tok.pad_token_id, "eos_token_id": None, **kw}
    kw = {k: v for k, v in kw.items() if v is not None or k == "eos_token_id"}
    if case.sensors:
        return model.generate(batch.pop("sensors"), **batch, **kw), batch
    return model.generate(**batch, **kw), batch


@params
def test_generation_each_row_alone_with_and_without_cache(built):
    case, model, tok, _ = built
    perturbed(model)
    rows = samples(4)
    cached, batch = _generate(case, model, tok, rows, seeds=[0, 1, 2])
    recomputed, _ = _generate(case, model, tok, rows, seeds=[0, 1, 2], use_cache=False)
    assert torch.equal(cached, recomputed)
    L = batch["input_ids"].shape[1]
    for i, row in enumerate(rows):
        alone, one = _generate(case, model, tok, [row], seeds=[i])
        assert torch.equal(alone[0, one["input_ids"].shape[1]:], cached[i, L:])


@params
def test_greedy_generation_is_the_argmax_of_the_scored_path(built):
    """What `generate` writes is what the training path scores highest, token for token: the two
    see the same mask (a prefix-LM's prompt both ways, its answer causal)."""
    case, model, tok, _ = built
    perturbed(model)
    rows = samples(5)
    out, batch = _generate(case, model, tok, rows, seeds=[0, 1, 2])
    new = out[:, batch["input_ids"].shape[1]:]
    for i, row in enumerate(rows):
        text = tok.decode(new[i], skip_special_tokens=False)
        scored = batch_of(case, model, tok, [Sample(row.prompt, text, row.media)], seeds=[i])
        with torch.no_grad():
            o, labels = run(model, scored)
        logits = o.logits[0]
        if not is_encoder_decoder(model):
            logits, labels = logits[:-1], labels[:, 1:]
        keep = labels[0] != IGNORE_INDEX
        assert torch.equal(logits[keep].argmax(-1)[:-1], labels[0][keep][:-1])  # the last label is eos


def cache_of(out):
    """A generate output's cache: `cache` since transformers 5.24, `past_key_values` before."""
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


@params
def test_a_second_turn_with_new_media_equals_recomputing_the_whole_history(built):
    case, model, tok, _ = built
    perturbed(model)
    limit = FAMILIES[case.family].limits.get("continue_cache")
    rows = samples(6, n=2)
    first, batch = _generate(case, model, tok, rows, seeds=[0, 1], return_dict_in_generate=True)
    more = tok([" <image> what is it"] * 2, return_tensors="pt", add_special_tokens=False)["input_ids"]
    history = torch.cat([first.sequences, more], 1)
    mask = torch.cat([batch["attention_mask"], torch.ones(2, history.shape[1] - batch["attention_mask"].shape[1],
                                                          dtype=torch.long)], 1)
    g = torch.Generator().manual_seed(9)
    new_pixels = torch.rand(2, 1, 1, 3, IMAGE, IMAGE, generator=g)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
    if limit:
        with pytest.raises(ValueError, match="past_key_values"):
            model.generate(history, attention_mask=mask, pixel_values=new_pixels,
                           past_key_values=cache_of(first), **kw)
        return
    if case.sensors:
        pytest.skip("a fusion prompt holds one media item: the fused sensors")
    continued = model.generate(history, attention_mask=mask, pixel_values=new_pixels, past_key_values=cache_of(first),
                               **kw)
    every = torch.cat([batch["pixel_values"], new_pixels], 1)
    frames = torch.ones(every.shape[:3], dtype=torch.bool)
    whole = model.generate(history, attention_mask=mask, pixel_values=every, frame_mask=frames, **kw)
    assert torch.equal(continued, whole)


@params
def test_save_and_reload_from_another_directory_gives_identical_logits(built, monkeypatch):
    case, model, tok, root = built
    perturbed(model)
    batch = batch_of(case, model, tok, samples(7))
    with torch.no_grad():
        before = run(model, batch)[0].logits
    model.save_pretrained(root / "ckpt")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = ms.AutoModel.from_pretrained(os.path.relpath(root / "ckpt", elsewhere)).eval()
    with torch.no_grad():
        assert torch.equal(run(again, batch)[0].logits, before)


@params
def test_bf16_backbones_train_one_step_save_and_reload(built):
    case, _, _, root = built
    impl = "sdpa" if "sdpa" in case.impls else case.impls[0]
    model, tok = case.build(root / "bf16", impl, torch.bfloat16)
    batch = batch_of(case, model, tok, samples(8))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    history = fit(model, iter([batch]), steps=1, optimizer=optimizer, progress=False)
    assert torch.isfinite(torch.tensor(history[0]["loss"]))
    model.eval().save_pretrained(root / "bf16-ckpt")
    again = ms.AutoModel.from_pretrained(root / "bf16-ckpt").eval()  # its backbones as they ran: in bf16
    assert {p.dtype for p in again.parameters()} == {p.dtype for p in model.parameters()}
    with torch.no_grad():
        assert torch.equal(run(again, batch)[0].logits, run(model, batch)[0].logits)


@params
def test_bad_inputs_get_a_value_error_naming_the_argument(built):
    case, model, tok, _ = built
    rows = samples(9, n=2)
    good = batch_of(case, model, tok, rows)

    def call(**change):
        batch = {**good, **change}
        labels = batch.pop("labels")
        if case.sensors:
            return model(**batch, labels=labels)
        return model(**batch, labels=labels)

    with pytest.raises(ValueError, match="labels"):  # a decoder's labels may be of any length, not of any batch
        call(labels=good["labels"][:1] if is_encoder_decoder(model) else good["labels"][:, :-1])
    with pytest.raises(ValueError, match="return_dict"):
        call(return_dict=False)
    if case.sensors:
        return
    with pytest.raises(TypeError, match="positional"):  # transformers' own orders differ: keywords after input_ids
        model(good["input_ids"], good["pixel_values"])
    with pytest.raises(ValueError, match="pixel_values|media|samples|rows"):
        call(pixel_values=good["pixel_values"][:1], frame_mask=good["frame_mask"][:1])  # media for 1 of 2 rows
    with pytest.raises(ValueError, match="pixel_values"):
        call(pixel_values=good["pixel_values"][:, :, 0], frame_mask=None)  # [B, M, C, H, W]: one rank short
    two = torch.cat([good["pixel_values"]] * 2, 1)
    with pytest.raises(ValueError, match="marker|media"):
        call(pixel_values=two, frame_mask=torch.ones(two.shape[:3], dtype=torch.bool))  # 2 items, 1 marker
    with pytest.raises(ValueError, match="pixel_values|frame_mask"):
        call(pixel_values=good["pixel_values"][:, :0], frame_mask=good["frame_mask"][:, :0])  # no media, 1 marker


@params
def test_the_transformers_conventions_hold(built):
    case, model, tok, root = built
    assert model.device == torch.device("cpu")
    assert model.dtype == torch.float32
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model.num_parameters(only_trainable=True) == trainable
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.get_input_embeddings() is model.lm.get_input_embeddings() if hasattr(model, "lm") else True
    assert isinstance(model.generation_config, tf.GenerationConfig)
    assert type(model.config).from_dict(model.config.to_dict()) == model.config
    model.save_pretrained(root / "ckpt")
    again = ms.AutoModel.from_pretrained(root / "ckpt", dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16


@params
def test_generate_follows_transformers_length_and_suppression(built):
    """`max_length` counts the tokens the caller wrote (not a prompt's hidden image tokens), a
    generation_config's `suppress_tokens` hold beside the marker's, and a request past the LM's
    positions is refused up front."""
    case, model, tok, _ = built
    perturbed(model)
    rows = samples(10, n=2)
    free, batch = _generate(case, model, tok, rows, seeds=[0, 1])
    L = batch["input_ids"].shape[1]
    if is_encoder_decoder(model):  # transformers counts a decoder's tokens: its start token and the new ones
        out, _ = _generate(case, model, tok, rows, seeds=[0, 1], max_length=4, max_new_tokens=None)
        assert out.shape[1] == L + 3
    else:
        out, _ = _generate(case, model, tok, rows, seeds=[0, 1], max_length=L + 3, max_new_tokens=None)
        assert out.shape[1] == L + 3
    banned = int(free[0, L])
    config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    config.suppress_tokens = [banned]
    out, _ = _generate(case, model, tok, rows, seeds=[0, 1], generation_config=config)
    assert banned not in out[:, L:].tolist()[0] and not torch.equal(out[:, L:], free[:, L:])
    limit = getattr(model.language_model().config, "max_position_embeddings", None)
    if limit is not None:
        with pytest.raises(ValueError, match="max_new_tokens"):
            _generate(case, model, tok, rows, seeds=[0, 1], max_new_tokens=limit)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_config_validates_itself_naming_the_dotted_key(name):
    family = FAMILIES[name]
    assert family.config_class.validate is not FamilyConfig.validate, \
        f"{family.config_class.__name__}: needs its own validate()"
    config = family.config_class()
    config.validate(where=f"model.{name}.")  # the defaults pass
    field = next(f for f in ("num_latents", "lora_rank", "max_length", "dim") if hasattr(config, f))
    with pytest.raises(ValueError, match=f"model.{name}.{field}"):
        config.replace(**{field: -1}).validate(where=f"model.{name}.")
