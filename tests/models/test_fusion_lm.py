"""The fusion family with a frozen language model: the fused latents as Flamingo media."""

import pytest
import torch
import transformers

from multisense import AutoModel, FusionConfig, FusionModel, backbones
from multisense.data.collate import Sample, collate
from multisense.data.tokenizer import add_missing_words
from multisense.data.world.tasks import prompt, question_tokens, question_words
from multisense.encoders import ForceTorqueEncoder, TactileEncoder
from multisense.eval.touch import answer_scores
from tests.conftest import interleaved_ids, tiny_lm

SENSORS = {"touch": {"encoder": "tactile", "dim": 16, "depth": 1, "num_tokens": 2},
           "wrist": {"encoder": "force_torque", "dim": 16}}
MARKER = 7  # an ordinary token of the tiny LMs: the marker reads as that token, so closed gates are the LM exactly
SIZES = dict(sensors=SENSORS, dim=32, num_latents=4, depth=1, heads=2, dim_head=8, cross_dim_head=8, xattn_heads=2,
             xattn_dim_head=8)


def sensors(n=2, seed=0):
    return {"touch": TactileEncoder.example(n, 0.1, seed=seed), "wrist": ForceTorqueEncoder.example(n, 0.2, seed=seed)}


def prompts(n=2, length=8):
    ids = interleaved_ids(n, length, [[0]] * n)
    ids[ids == MARKER] = 8
    ids[:, 0] = MARKER
    return ids


def open_gates(model, value=0.5):
    for block in model.flamingo.gated_layers:
        block.attn_gate.alpha.data.fill_(value)
        block.ff_gate.alpha.data.fill_(value)
    return model


def fusion_lm(arch="gpt2", **kw):
    torch.manual_seed(0)
    return FusionModel(FusionConfig(**SIZES, media_token_id=MARKER, **kw), lm=tiny_lm(arch)).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_closed_gates_give_the_frozen_lms_logits_whatever_the_sensors(arch):
    model, lm, ids = fusion_lm(arch), tiny_lm(arch), prompts()
    reference = lm(ids).logits
    for seed in (0, 1):
        assert torch.equal(model(sensors(seed=seed), input_ids=ids).logits, reference)
    open_gates(model)  # and the sensors do reach the LM once the gates open
    assert not torch.allclose(model(sensors(seed=0), input_ids=ids).logits, model(sensors(seed=1), input_ids=ids).logits)


def test_the_lm_stays_frozen_gates_learn_first_and_then_every_fusion_weight():
    model = fusion_lm().train()
    ids = prompts()
    model(sensors(), input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("flamingo.lm."):
            assert not p.requires_grad and p.grad is None, name
        elif name.endswith("alpha"):
            assert p.grad.abs().sum() > 0, name
        elif name.startswith(("encoders.", "perceiver.")):  # behind closed gates: nothing reaches them yet
            assert p.grad is None or not p.grad.any(), name
    model.zero_grad(set_to_none=True)
    open_gates(model)(sensors(), input_ids=ids, labels=ids).loss.backward()
    fused = [(n, p) for n, p in model.named_parameters() if n.startswith(("encoders.", "perceiver."))]
    assert fused and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in fused)
    assert model.token_labels and not FusionModel(FusionConfig(sensors=SENSORS, class_names=["a", "b"])).token_labels


def test_greedy_generation_with_the_cache_equals_recomputation():
    model = open_gates(fusion_lm())
    x, ids = sensors(), prompts()
    generated = model.generate(x, ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    recomputed = ids
    for _ in range(5):  # the whole sequence through forward each time, no cache
        logits = model(x, input_ids=recomputed, use_cache=False).logits[:, -1]
        logits[:, MARKER] = float("-inf")  # generate never emits the marker
        recomputed = torch.cat((recomputed, logits.argmax(-1, keepdim=True)), 1)
    assert torch.equal(generated, recomputed)


def test_save_load_round_trip_through_automodel_with_the_embedded_lm_and_its_new_words(tmp_path):
    lm_dir, _ = backbones.resolve("default")
    tokenizer = transformers.AutoTokenizer.from_pretrained(lm_dir)
    added = add_missing_words(tokenizer, question_words())
    assert "finger" in added and "question" not in added  # the embedded LM knows "question", not "finger"
    torch.manual_seed(0)
    model = open_gates(FusionModel(FusionConfig(**SIZES, lm="default"), tokenizer=tokenizer), 0.3).eval()
    assert len(model.config.added_token_ids) == len(added)
    with torch.no_grad():
        model.flamingo.added_embeddings.add_(torch.randn_like(model.flamingo.added_embeddings))
    text = question_tokens(["is the finger slipping now ?", "did the finger slip ?"], ["yes", "no"], tokenizer)
    x = sensors()
    before = model(x, input_ids=text["input_ids"], attention_mask=text["attention_mask"]).logits
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "tokenizer.json").is_file()
    again = AutoModel.from_pretrained(tmp_path / "model").eval()
    assert isinstance(again, FusionModel) and again.config == model.config
    assert not any(k.startswith("flamingo.lm.") for k in again.trainable_state_dict())  # recorded, not copied
    after = again(x, input_ids=text["input_ids"], attention_mask=text["attention_mask"]).logits
    assert torch.equal(after, before)
    scores = answer_scores(again, x, ["did the finger slip ?"] * 2, ["no", "yes"])
    assert scores.shape == (2, 2) and (scores < 0).all()
    asked = collate([Sample(prompt("did the finger slip ?")), Sample(prompt("is the finger lifted off now ?"))],
                    tokenizer, for_generation=True)  # left-padded prompts, up to "answer :"
    ids = again.generate(x, asked["input_ids"], attention_mask=asked["attention_mask"], max_new_tokens=2,
                         do_sample=False)
    words = again.tokenizer.batch_decode(ids[:, asked["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(words) == 2 and all(isinstance(w, str) for w in words)


def test_the_embedded_lm_cannot_say_a_material_unless_it_is_mapped_to_one_of_its_words():
    model = FusionModel(FusionConfig(**SIZES, lm="default"))
    assert model.lm_tokens("yes") == [model.tokenizer.convert_tokens_to_ids("yes")]
    with pytest.raises(ValueError, match="answers: the LM .* has no word for 'brick'.*model.fusion.answers"):
        model.lm_tokens("brick")
    mapped = FusionModel(FusionConfig(**SIZES, lm="default", answers={"brick": "red"}))
    assert mapped.lm_tokens("brick") == mapped.lm_tokens("red")


def test_clear_errors():
    model, ids = fusion_lm(), prompts()
    with pytest.raises(ValueError, match="media_features: a fusion model's media are its fused sensors"):
        model(sensors(), input_ids=ids, media_features=torch.randn(2, 1, 1, 4, 32))
    no_marker = ids.clone()
    no_marker[1, 0] = 8
    with pytest.raises(ValueError, match=r"input_ids: sample 1 holds 0 media markers .* exactly one marker"):
        model(sensors(), input_ids=no_marker)
    with pytest.raises(ValueError, match="input_ids: required with an LM"):
        model(sensors())
    head = FusionModel(FusionConfig(sensors=SENSORS, class_names=["a", "b"]))
    with pytest.raises(ValueError, match="input_ids: this fusion model has no language model"):
        head(sensors(), input_ids=ids)
    with pytest.raises(ValueError, match="class_names: .* give one or the other"):
        FusionModel(FusionConfig(**SIZES, class_names=["a"], media_token_id=MARKER), lm=tiny_lm())
    with pytest.raises(ValueError, match="fuse='late'"):
        FusionModel(FusionConfig(**SIZES, fuse="late", class_names=["a"], media_token_id=MARKER), lm=tiny_lm())
