import json

import numpy as np
import pytest
import torch

from multisense import FusionModel
from multisense.cli import main as cli
from multisense.data.world import generate
from multisense.data.world.tasks import TouchEpisodes, collate_touch, question_tokens
from multisense.eval.touch import attention_shift, subsets

TINY = ["model.fusion.dim=16", "model.fusion.num_latents=4", "model.fusion.heads=2", "model.fusion.dim_head=8",
        "model.fusion.cross_dim_head=8", "data.world.episodes=4", "data.world.seconds=1.0", "data.world.workers=1",
        "data.batch_size=2", "train.progress=false", "train.log_every=1", "check.min_accuracy=null"]
for sensor, encoder in (("camera", "vision"), ("touch", "tactile"), ("wrist", "force_torque"),
                        ("microphone", "audio")):
    TINY.append(f"model.fusion.sensors.{sensor}={{encoder: {encoder}, dim: 16}}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`multisense train --config touch` (tiny), 2 steps, then resumed to 3."""
    root = tmp_path_factory.mktemp("touch")
    cache = root / "cache"
    args = ["train", "--config", "touch", *TINY, f"data.world.cache_dir={cache}", f"train.out_dir={root / 'run'}",
            "train.save_every=2"]
    assert cli(args + ["train.steps=2"]) == 0
    first = (root / "run" / "logs" / "metrics.csv").read_text()
    assert cli(args + ["train.steps=3"]) == 0  # resumes at its step-2 checkpoint
    return root, cache, first


def test_train_writes_a_fusion_model_and_resumes(run):
    root, _, first = run
    model = FusionModel.from_pretrained(root / "run" / "model")
    assert model.config.class_names == ["smooth", "brick", "grass", "gravel"]  # from data.task
    assert sorted(model.config.sensors) == ["camera", "microphone", "touch", "wrist"]
    rows = (root / "run" / "logs" / "metrics.csv").read_text().splitlines()
    assert rows[:len(first.splitlines())] == first.splitlines() and rows[-1].split(",")[0] == "3"


def test_eval_measures_the_saved_model_on_held_out_episodes(run, tmp_path, capsys, monkeypatch):
    root, cache, _ = run
    monkeypatch.setenv("MULTISENSE_CACHE", str(cache))
    out = tmp_path / "result"
    assert cli(["eval", "--model", str(root / "run" / "model"), "--episodes", "4", "--seconds", "1",
                "--workers", "1", "--subsets", "--out", str(out)]) == 0
    result = json.loads((out.with_suffix(".json")).read_text())
    assert result["world_seed"] == 1 and result["episodes"] == 4
    seen = [(r["sensors"], r["occlusion"]) for r in result["rows"]]
    assert seen[:2] == [("camera+microphone+touch+wrist", 0.0), ("camera+microphone+touch+wrist", 1.0)]
    assert len(seen) == 2 + 14  # and every smaller subset (15 non-empty subsets, the full one above)
    assert all(0 <= r["accuracy"] <= 1 for r in result["rows"])
    model = FusionModel.from_pretrained(root / "run" / "model")
    data = TouchEpisodes(generate(4, 1, seconds=1.0, cache_dir=cache, workers=1), occlusion=1.0, seed=1)
    batch = collate_touch([data[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        predicted = model({"touch": batch["sensors"]["touch"]}).logits.argmax(-1)
    row = dict(zip(seen, result["rows"]))[("touch", 1.0)]
    assert row["accuracy"] == pytest.approx(float((predicted == batch["labels"]).float().mean()))


def test_eval_refuses_a_task_whose_answers_are_not_the_models(run, capsys):
    """A 4-class material head scored on slipping's labels compared class ids of one task with
    labels of another (0.042, no complaint)."""
    root, _, _ = run
    assert cli(["eval", "--model", str(root / "run" / "model"), "--task", "slipping", "--episodes", "2"]) == 2
    assert "answers ['smooth', 'brick', 'grass', 'gravel'], not slipping's" in capsys.readouterr().err


def test_fusion_runs_refuse_what_they_cannot_use(tmp_path, capsys):
    base = ["train", "--config", "touch", *TINY, f"train.out_dir={tmp_path / 'r'}"]
    assert cli(base + ["model.fusion.sensors.sonar={encoder: audio}"]) == 2
    assert "no sensor named 'sonar'" in capsys.readouterr().err
    assert cli(base + ["data.task=colour"]) == 2
    assert "data.task" in capsys.readouterr().err
    assert cli(base + ["check.shots=[0]", "check.min_accuracy=0.5"]) == 2
    assert "check.shots: not used by model.family=fusion" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_checked_run_measures_held_out_episodes_with_the_camera_blocked_and_says_if_it_failed(run, tmp_path,
                                                                                              capsys):
    root, cache, _ = run
    base = ["train", "--config", "touch", *TINY, f"data.world.cache_dir={cache}", "train.steps=1", "check.samples=4"]
    assert cli(base + [f"train.out_dir={tmp_path / 'a'}", "check.min_accuracy=0.0"]) == 0
    report = json.loads((tmp_path / "a" / "check.json").read_text())
    assert report["passed"] and report["world_seed"] == 1 and report["occlusion"] == 1.0 and report["samples"] == 4
    model = FusionModel.from_pretrained(tmp_path / "a" / "model")
    data = TouchEpisodes(generate(4, 1, seconds=1.0, cache_dir=cache, workers=1), occlusion=1.0, seed=1)
    batch = collate_touch([data[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        own = float((model(batch["sensors"]).logits.argmax(-1) == batch["labels"]).float().mean())
    assert report["accuracy"] == pytest.approx(own)
    if own < 1.0:  # the same run asked for more than it reached: it says so and writes no model
        capsys.readouterr()
        assert cli(base + [f"train.out_dir={tmp_path / 'b'}", "check.min_accuracy=1.0"]) == 1
        assert "missed its check" in capsys.readouterr().err and not (tmp_path / "b" / "model").exists()
        assert not json.loads((tmp_path / "b" / "check.json").read_text())["passed"]


def test_attention_over_time_splits_the_models_own_share_over_time(run):
    root, cache, _ = run
    model = FusionModel.from_pretrained(root / "run" / "model").eval()
    assert model.config.balance_modalities  # the preset's: a slice attended alone would get other biases
    data = TouchEpisodes(generate(4, 0, seconds=1.0, cache_dir=cache, workers=1), occlusion=0.5)
    batch = collate_touch([data[i] for i in range(4)])
    with torch.no_grad():
        whole = model(batch["sensors"], return_attention=True).attention
        one = model.attention_over_time(batch["sensors"], bins=1)
        many = model.attention_over_time(batch["sensors"], bins=4)
    expected = torch.stack([whole[n].mean(-1) for n in model.perceiver.names], -1)[:, None]
    torch.testing.assert_close(one, expected)
    torch.testing.assert_close(many.sum(1, keepdim=True), expected)
    shift = attention_shift(model, data, bins=4)
    assert shift["shares"].shape == (4, 4, 4) and set(shift["before"]) == set(model.perceiver.names)
    np.testing.assert_allclose(shift["mass"], many.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(shift["shares"] * many.sum(-1, keepdim=True).numpy(), many.numpy(), rtol=1e-5,
                               atol=1e-7)  # each slice's split between the sensors
    np.testing.assert_allclose(shift["shares"].sum(-1), np.ones((4, 4)), rtol=1e-5)  # every slice holds tokens
    assert (0 < shift["contact"]).all() and (shift["contact"] < 1.0).all()


def test_subsets_are_every_non_empty_one():
    assert subsets(["b", "a"]) == [("a", "b"), ("a",), ("b",)]


# ---------------------------------------------------------------------------------- with a language model

LM = ["model.fusion.xattn_heads=2", "model.fusion.xattn_dim_head=8"]  # the preset's LM: the embedded GPT-2


@pytest.fixture(scope="module")
def lm_run(run, tmp_path_factory):
    """`multisense train --config touch_lm` (tiny, contact questions): 2 steps resumed to 3, and 3 straight."""
    root = tmp_path_factory.mktemp("touch_lm")
    cache = run[1]  # the same episodes as the head's run, simulated once
    args = ["train", "--config", "touch_lm", *TINY, *LM, f"data.world.cache_dir={cache}", "train.save_every=2"]
    assert cli(args + [f"train.out_dir={root / 'run'}", "train.steps=2"]) == 0
    assert cli(args + [f"train.out_dir={root / 'run'}", "train.steps=3"]) == 0  # resumes at step 2
    assert cli(args + [f"train.out_dir={root / 'straight'}", "train.steps=3"]) == 0
    return root, cache


def test_an_lm_run_resumes_exactly_and_saves_what_it_trained(lm_run):
    from safetensors.torch import load_file

    root, _ = lm_run
    resumed, straight = (load_file(root / d / "model" / "model.safetensors") for d in ("run", "straight"))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in resumed)
    assert not any(k.startswith("flamingo.lm.") for k in resumed)  # the frozen LM is recorded, not copied
    assert any(k.endswith("alpha") for k in resumed) and "flamingo.added_embeddings" in resumed
    rows = lambda d: (root / d / "logs" / "metrics.csv").read_text().splitlines()  # noqa: E731
    assert rows("run") == rows("straight")
    model = FusionModel.from_pretrained(root / "run" / "model")
    assert model.flamingo is not None and model.config.class_names == [] and model.config.lm == "default"


def test_eval_scores_the_candidate_answers_of_held_out_questions(lm_run, tmp_path, monkeypatch):
    from multisense.eval.touch import answer_scores

    root, cache = lm_run
    monkeypatch.setenv("MULTISENSE_CACHE", str(cache))
    out = tmp_path / "result"
    assert cli(["eval", "--model", str(root / "run" / "model"), "--task", "contact", "--episodes", "4",
                "--seconds", "1", "--workers", "1", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["answers"] == "words, scored by the LM" and 0 <= result["majority"] <= 1
    assert [r["occlusion"] for r in result["rows"]] == [0.0, 1.0]
    model = FusionModel.from_pretrained(root / "run" / "model").eval()
    data = TouchEpisodes(generate(4, 1, seconds=1.0, cache_dir=cache, workers=1), task="contact", seed=1)
    samples = [data[i] for i in range(4)]
    batch = collate_touch(samples)
    with torch.no_grad():
        scores = answer_scores(model, batch["sensors"], [s["question"] for s in samples], ["no", "yes"])
    expected = float((scores.argmax(-1) == batch["labels"]).float().mean())  # occlusion 0: TouchEpisodes' default
    assert result["rows"][0]["accuracy"] == pytest.approx(expected)
    assert sum(q["episodes"] for q in result["rows"][0]["questions"].values()) == 4
    text = question_tokens([s["question"] for s in samples], ["yes"] * 4, model.tokenizer)  # greedy answers too
    prompt_length = int((text["labels"] == -100).sum(-1).min())
    ids = model.generate(batch["sensors"], text["input_ids"][:, :prompt_length], max_new_tokens=1, do_sample=False)
    assert ids.shape == (4, prompt_length + 1)


def test_lm_runs_refuse_what_they_cannot_do(tmp_path, capsys):
    base = ["train", "--config", "touch", *TINY, f"train.out_dir={tmp_path / 'r'}"]
    assert cli(base + ["data.task=contact"]) == 2
    assert "a classification head cannot read it: set model.fusion.lm" in capsys.readouterr().err
    assert cli(base + ["model.fusion.lm=default", "model.fusion.class_names=[a, b]"]) == 2
    assert "model.fusion.class_names: with model.fusion.lm" in capsys.readouterr().err
    assert cli(base + ["model.fusion.lm=default"]) == 2  # data.task=material: the embedded LM knows no material
    assert "has no word for 'smooth'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
