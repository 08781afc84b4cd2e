"""Building embedded backbones: a few training steps make loadable Hugging Face folders, each part
written whole or not at all, the in-context LM kept only once its lookup formed."""

import json
import os

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, T5ForConditionalGeneration

from multisense import backbones
from multisense.backbones import build, language, vision
from multisense.backbones.pretraining import SUMMARY_FILE
from multisense.data import scenes
from multisense.data.tokenizer import train_word_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_word_tokenizer(scenes.text_corpus(20, seed=0))


def test_pretrain_lm_writes_loadable_model(tokenizer, tmp_path):
    out = language.pretrain_lm(tokenizer, tmp_path / "lm", steps=3, batch_size=4, corpus_lines=200, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    assert (out / "model.safetensors").is_file()
    assert model.config.vocab_size == len(loaded) == len(tokenizer)
    assert model.config.eos_token_id == loaded.eos_token_id == tokenizer.eos_token_id
    line = "caption : a red circle ."
    assert loaded(line)["input_ids"] == tokenizer(line)["input_ids"]
    logits = model(**loaded(line, return_tensors="pt")).logits
    assert logits.shape == (1, len(line.split()), len(tokenizer))


def test_pretrain_lm_is_deterministic(tokenizer, tmp_path):
    kwargs = dict(steps=2, batch_size=4, corpus_lines=200, progress=False)
    first = AutoModelForCausalLM.from_pretrained(language.pretrain_lm(tokenizer, tmp_path / "a", **kwargs))
    second = AutoModelForCausalLM.from_pretrained(language.pretrain_lm(tokenizer, tmp_path / "b", **kwargs))
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)


def test_pretrain_vision_saves_a_vision_tower_that_learned_its_patch_labels(tmp_path):
    out = vision.pretrain_vision(tmp_path / "vision", steps=40, batch_size=8, lr=3e-3, progress=False)
    tower = AutoModel.from_pretrained(out)  # a plain vision tower: no text tower, no heads saved
    assert isinstance(tower, CLIPVisionModel)
    hidden = tower(pixel_values=torch.zeros(2, 3, 32, 32)).last_hidden_state
    assert hidden.shape == (2, 1 + (32 // 4) ** 2, 128)  # CLS token plus 8 x 8 patches
    summary = json.loads((out / SUMMARY_FILE).read_text())
    # At initialisation the two heads' cross-entropies sum to log(73) + log(5) = 5.9 nats.
    assert summary["steps"] == 40 and summary["final_loss"] < 4.0


def test_patch_labels_name_the_object_under_each_patch():
    objects = (scenes.SceneObject("red", "square", x=6.0, y=6.0, size=8.0),
               scenes.SceneObject("blue", "circle", x=22.0, y=22.0, size=10.0))
    grid = vision.patch_labels(objects, image_size=32, patch_size=4).reshape(8, 8)
    background = vision.patch_labels((), image_size=32, patch_size=4)
    assert background.shape == (64,) and set(background.tolist()) == {vision.BACKGROUND}
    assert grid[0, 7] == vision.BACKGROUND  # top-right corner: empty
    centres = [grid[int(obj.y) // 4, int(obj.x) // 4] for obj in objects]
    # Each object has its own class; every patch is background or one of the two objects.
    assert len({*centres, vision.BACKGROUND}) == 3
    assert set(grid.flatten().tolist()) == {*centres, vision.BACKGROUND}
    # The class changes with the colour, the shape and the left-to-right rank alike.
    for other in ((scenes.SceneObject("green", "square", 6.0, 6.0, 8.0), objects[1]),
                  (scenes.SceneObject("red", "cross", 6.0, 6.0, 8.0), objects[1]),
                  (objects[1], objects[0])):
        relabelled = vision.patch_labels(other, image_size=32, patch_size=4).reshape(8, 8)
        assert relabelled[int(objects[0].y) // 4, int(objects[0].x) // 4] != centres[0]
    # The shape head's target: the shape alone, background its own class.
    shapes = vision.patch_shapes(torch.from_numpy(grid))
    assert [int(shapes[int(o.y) // 4, int(o.x) // 4]) for o in objects] == [scenes.SHAPES.index(o.shape)
                                                                             for o in objects]
    assert int(shapes[0, 7]) == len(scenes.SHAPES)


def test_pretrain_icl_lm_writes_a_loadable_llama_trained_on_episodes(tmp_path):
    tok = language.default_tokenizer()
    out = language.pretrain_icl_lm(tok, tmp_path / "icl", steps=2, batch_size=4, corpus_lines=40, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    # Two steps form no lookup: the recorded check reads about chance, far below the bar.
    assert summary["seed"] == 0 and summary["in_words_accuracy"] < build.ICL_MIN_ACCURACY


def _icl_scoring(accuracy_by_seed: dict[int, float], calls: list[int]):
    """A cheap `pretrain_icl_lm` (2 steps) whose recorded in-words accuracy is given per seed."""
    real = language.pretrain_icl_lm

    def fake(tokenizer, out_dir, *, seed, **kwargs):
        calls.append(seed)
        out = real(tokenizer, out_dir, **{**kwargs, "seed": seed, "corpus_lines": 40, "batch_size": 4})
        summary = json.loads((out / SUMMARY_FILE).read_text())
        (out / SUMMARY_FILE).write_text(json.dumps({**summary, "in_words_accuracy": accuracy_by_seed[seed]}))
        return out

    return fake


def test_the_icl_build_retries_the_next_seed_until_the_lookup_forms(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(build, "pretrain_icl_lm", _icl_scoring({1: 0.2, 2: 0.85, 3: 0.9}, calls))
    with pytest.warns(UserWarning, match="seed 1: 8-shot accuracy in words 0.20"):
        summary = build.build_icl_lm(tmp_path / "icl", steps=2, seeds=(1, 2, 3), progress=False)
    assert calls == [1, 2]  # stopped at the first seed that formed the lookup
    assert summary["seed"] == 2 and summary["seeds_tried"] == {1: 0.2, 2: 0.85}
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "icl").config.model_type == "llama"


def test_a_build_whose_lookup_never_forms_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(build, "pretrain_icl_lm", _icl_scoring({1: 0.2, 2: 0.25, 3: 0.3}, calls))
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=r"formed no lookup.*\{1: 0.2, 2: 0.25, 3: 0.3\}"):
        build.build(tmp_path / "set", parts=("icl",), progress=False, icl_steps=2, icl_seeds=(1, 2, 3))
    assert calls == [1, 2, 3] and not (tmp_path / "set" / "icl").exists()
    assert [p.name for p in (tmp_path / "set").iterdir()] == []  # no partial folder, no manifest


def test_build_writes_each_part_and_a_manifest_and_resolves_by_name(tmp_path, monkeypatch):
    out = build.build(tmp_path / "set", progress=False, lm_steps=2, vision_steps=2, icl_steps=2, t5_steps=2,
                      icl_min_accuracy=0.0)
    found = backbones.Backbones.at(out)
    assert AutoTokenizer.from_pretrained(found.lm).eos_token == "<eos>"
    CLIPVisionModel.from_pretrained(found.vision)
    manifest = json.loads((out / backbones.MANIFEST).read_text())
    assert manifest["version"] == build.VERSION and set(manifest["parts"]) == set(build.PARTS)
    probed = {k for p in manifest["parts"].values() for k in p}
    assert {"heldout_loss", "shape_probe", "in_words_accuracy", "denoising_accuracy"} <= probed
    assert all(p["machine"]["flags"] and "command" in p for p in manifest["parts"].values())
    assert sorted(p.name for p in out.iterdir()) == ["icl", "lm", "manifest.json", "t5", "vision"]
    assert T5ForConditionalGeneration.from_pretrained(found.t5).config.feed_forward_proj == "gated-gelu"
    # a rebuild of one part keeps the others, and the manifest's record of them
    mtime = (found.lm / "model.safetensors").stat().st_mtime_ns
    build.build(out, parts=("vision",), progress=False, vision_steps=2, measure=False)
    assert (found.lm / "model.safetensors").stat().st_mtime_ns == mtime
    assert json.loads((out / backbones.MANIFEST).read_text())["parts"]["lm"] == manifest["parts"]["lm"]
    # names resolve to the shipped set, whose folder is looked up, not built
    monkeypatch.setattr(backbones, "WEIGHTS", out)
    assert backbones.resolve("icl") == (str(found.icl), None)
    assert backbones.resolve("t5", "default") == (str(found.t5), str(found.vision))
    assert backbones.resolve("default", "default") == (str(found.lm), str(found.vision))


def test_an_interrupted_part_leaves_the_previous_one(tmp_path, monkeypatch):
    out = build.build(tmp_path / "set", parts=("vision",), progress=False, vision_steps=2, measure=False)
    before = (out / "vision" / "model.safetensors").read_bytes()

    def interrupted(folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "pretrain_vision", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.build(out, parts=("vision",), progress=False)
    assert (out / "vision" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "vision"]


def test_a_backbone_that_is_no_local_directory_is_named(tmp_path):
    lm, tower = tmp_path / "lm", tmp_path / "vision"
    lm.mkdir()
    tower.mkdir()
    assert backbones.resolve(str(lm), str(tower)) == (str(lm), str(tower))
    # not transformers' "Repo id must be in the form ...": the key, and what it takes
    with pytest.raises(FileNotFoundError, match=r"model.lm: expected a local directory or one of 'default', 'icl', 't5', "
                                                r"got 'no/such/lm'"):
        backbones.resolve("no/such/lm", "default")
    with pytest.raises(FileNotFoundError, match=r"model.vision: expected a local directory or 'default', "
                                                r"got 'no/such/tower'"):
        backbones.resolve("default", "no/such/tower")
    with pytest.raises(ValueError, match="model.vision"):
        backbones.resolve(str(lm), "icl")
    with pytest.raises(FileNotFoundError, match="multisense backbones build --out"):
        backbones.Backbones.at(tmp_path)


def test_a_built_folder_gets_the_modes_the_umask_gives(tmp_path):
    # mkdtemp makes a 0700 folder and safetensors 0600 files: the set would be its owner's only
    old = os.umask(0o022)
    try:
        build.build(tmp_path / "set", parts=("vision",), progress=False, vision_steps=2, measure=False)
    finally:
        os.umask(old)
    root = tmp_path / "set"
    modes = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in [root / "vision", *root.rglob("*")]}
    assert modes["vision"] == 0o755 and modes["vision/model.safetensors"] == 0o644 and modes["manifest.json"] == 0o644
