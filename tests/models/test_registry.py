"""Every registered family through the same commands: train, eval, AutoModel."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import multisense as ms
from multisense.cli import main as cli
from multisense.models.registry import FAMILIES, family_of, get_family
from tests.train.backbones import save_tiny_backbones


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


def train_args(backbones, out, family):
    lm, vision = backbones
    shots = 1
    if family == "pali-t5":  # PaLI over an encoder-decoder: one image per sample, before its prompt
        family, lm, shots = "pali", lm.parent / "t5", 0
    args = [f"model.family={family}", f"model.lm={lm}", f"model.vision={vision}", "data.task=video",
            "data.task_args={frames: 2}", f"data.max_shots={shots}", "data.batch_size=2", "optim.warmup_steps=1",
            "train.steps=3", "train.save_every=3", "train.log_every=1", f"train.out_dir={out}", "train.progress=false",
            "train.device=cpu"]
    if family == "flamingo":
        args += ["model.flamingo.num_latents=4", "model.flamingo.resampler_depth=1", "model.flamingo.resampler_heads=2",
                 "model.flamingo.resampler_dim_head=8", "model.flamingo.xattn_heads=2",
                 "model.flamingo.xattn_dim_head=8", "model.flamingo.max_frames=4"]
    return args


@pytest.mark.parametrize("family", ["flamingo", "llava", "pali", "pali-t5"])
def test_each_family_trains_evaluates_and_reloads_through_one_interface(backbones, tmp_path, family, capsys):
    out = tmp_path / "run"
    assert cli(["train", *train_args(backbones, out, family)]) == 0
    family = family.split("-")[0]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["final_loss"] > 0
    assert family_of(out / "model") == family
    model = ms.AutoModel.from_pretrained(out / "model")
    assert type(model) is get_family(family).model_class
    trained = model.trainable_state_dict()
    saved = ms.models.io.load_checkpoint(out / "model")[1]
    assert set(trained) == set(saved) and all(torch.equal(trained[k], saved[k]) for k in saved)
    assert cli(["eval", "--model", str(out / "model"), "--task", "video", "--task-arg", "frames=2", "--shots", "0",
                "--seeds", "0", "--samples", "4", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= result["shots"]["0"]["accuracy"]["mean"] <= 1.0 and result["chance"] == 0.25
    image = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    assert cli(["generate", "--model", str(out / "model"), "--image", str(image), "--prompt",
                "<image> direction :", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # one answer line (3 tokens of an untrained model)
    assert cli(["generate", "--model", str(out / "model"), "--prompt", "<image> <image> x", "--image",
                str(image)]) == 2
    assert "--prompt holds 2 <image> markers for 1 --image files" in capsys.readouterr().err


def test_the_registry_names_the_nearest_family_and_every_family_is_a_class_with_a_config():
    with pytest.raises(ValueError, match=r"unknown family 'lava'.*did you mean 'llava'"):
        get_family("lava")
    assert {"flamingo", "llava"} <= set(FAMILIES)
    assert "fusion" in FAMILIES
    for family in FAMILIES.values():
        assert hasattr(family.model_class, "from_pretrained")
        if hasattr(family.model_class, "from_lm"):  # the families over a language model
            # a class constant, or a property of the model (PaLI: by its LM, causal or encoder-decoder)
            assert isinstance(family.model_class.shift_labels, (bool, property))
            assert callable(family.model_class.align_labels)


def test_an_unknown_family_in_a_config_is_named_before_anything_loads(tmp_path):
    assert cli(["train", "model.family=perceiver", f"train.out_dir={tmp_path / 'run'}", "data.task=video"]) == 2
    assert not (tmp_path / "run").exists()


def test_automodel_names_a_directory_that_is_not_a_multisense_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="names no family"):
        ms.AutoModel.from_pretrained(tmp_path)


def test_llava_cannot_take_the_flamingo_only_distillation(backbones, tmp_path):
    from multisense.config import load_config
    from multisense.train.trainer import TrainConfig, train

    cfg = load_config(TrainConfig, None, train_args(backbones, tmp_path / "run", "llava") + ["train.distill_words=1"])
    with pytest.raises(ValueError, match="train.distill_words: in-words distillation .* model.family=llava"):
        train(cfg)


def test_llava_stage_two_starts_from_the_stage_one_projector_and_adds_lora(backbones, tmp_path):
    from multisense.config import load_config
    from multisense.models.io import load_checkpoint
    from multisense.train.trainer import TrainConfig, train

    stage1 = tmp_path / "stage1"
    train(load_config(TrainConfig, None, train_args(backbones, stage1, "llava")))
    saved = load_checkpoint(stage1 / "model")[1]
    seen = {}

    def capture(model):
        seen.update({k: v.clone() for k, v in model.trainable_state_dict().items()})

    args = train_args(backbones, tmp_path / "stage2", "llava") + [
        "model.llava.lora_rank=4", f"model.init_from={stage1 / 'model'}"]
    train(load_config(TrainConfig, None, args), setup=capture)
    assert all(torch.equal(seen[k], saved[k]) for k in saved)  # the projector as stage 1 left it
    assert any("lora_" in k for k in set(seen) - set(saved))
    final = load_checkpoint(tmp_path / "stage2" / "model")[1]
    assert any("lora_" in k for k in final)
    flamingo = train_args(backbones, tmp_path / "x", "flamingo") + [f"model.init_from={stage1 / 'model'}"]
    with pytest.raises(ValueError, match="model.init_from: .* is a llava model, model.family is flamingo"):
        train(load_config(TrainConfig, None, flamingo))
