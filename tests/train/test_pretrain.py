"""Default backbones: a few training steps produce loadable Hugging Face folders, cached once."""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

from multisense.data import scenes
from multisense.data.tokenizer import train_word_tokenizer
from multisense.train import pretrain


@pytest.fixture(scope="module")
def tokenizer():
    return train_word_tokenizer(scenes.text_corpus(20, seed=0))


def test_pretrain_lm_writes_loadable_model(tokenizer, tmp_path):
    out = pretrain.pretrain_lm(tokenizer, tmp_path / "lm", steps=3, batch_size=4, progress=False)
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
    kwargs = dict(steps=2, batch_size=4, progress=False)
    first = AutoModelForCausalLM.from_pretrained(pretrain.pretrain_lm(tokenizer, tmp_path / "a", **kwargs))
    second = AutoModelForCausalLM.from_pretrained(pretrain.pretrain_lm(tokenizer, tmp_path / "b", **kwargs))
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)


def test_pretrain_vision_saves_a_vision_tower_that_learned_its_patch_labels(tmp_path):
    out = pretrain.pretrain_vision(tmp_path / "vision", steps=40, batch_size=8, lr=3e-3, progress=False)
    vision = AutoModel.from_pretrained(out)  # a plain vision tower: no text tower, no heads saved
    assert isinstance(vision, CLIPVisionModel)
    hidden = vision(pixel_values=torch.zeros(2, 3, 32, 32)).last_hidden_state
    assert hidden.shape == (2, 1 + (32 // 4) ** 2, 128)  # CLS token plus 8 x 8 patches
    summary = json.loads((out / pretrain.SUMMARY_FILE).read_text())
    # At initialisation the two heads' cross-entropies sum to log(73) + log(5) = 5.9 nats.
    assert summary["steps"] == 40 and summary["final_loss"] < 4.0


def test_ensure_default_backbones_builds_once(tmp_path, monkeypatch):
    calls = []
    build_lm = pretrain.pretrain_lm

    def counted_lm(*args, **kwargs):
        calls.append("lm")
        return build_lm(*args, **kwargs)

    monkeypatch.setattr(pretrain, "pretrain_lm", counted_lm)
    first = pretrain.ensure_default_backbones(tmp_path, progress=False, lm_steps=2, vision_steps=2)
    assert first.lm == tmp_path / pretrain.VERSION / "lm"
    assert AutoTokenizer.from_pretrained(first.lm).eos_token == "<eos>"
    CLIPVisionModel.from_pretrained(first.vision)
    # The build folder was renamed into place: nothing partial is left behind.
    assert [p.name for p in tmp_path.iterdir()] == [pretrain.VERSION]
    mtime = (first.vision / "model.safetensors").stat().st_mtime_ns

    second = pretrain.ensure_default_backbones(tmp_path, progress=False, lm_steps=2, vision_steps=2)
    assert second == first and calls == ["lm"]
    assert (second.vision / "model.safetensors").stat().st_mtime_ns == mtime


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    def fake_lm(tokenizer, out_dir, **kwargs):
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"half written")

    def interrupted_vision(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "pretrain_lm", fake_lm)
    monkeypatch.setattr(pretrain, "pretrain_vision", interrupted_vision)
    with pytest.raises(KeyboardInterrupt):
        pretrain.ensure_default_backbones(tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_defaults_to_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTISENSE_CACHE", str(tmp_path))
    assert pretrain.default_cache_dir() == tmp_path


def test_patch_labels_name_the_object_under_each_patch():
    objects = (scenes.SceneObject("red", "square", x=6.0, y=6.0, size=8.0),
               scenes.SceneObject("blue", "circle", x=22.0, y=22.0, size=10.0))
    grid = pretrain.patch_labels(objects, image_size=32, patch_size=4).reshape(8, 8)
    background = pretrain.patch_labels((), image_size=32, patch_size=4)
    assert background.shape == (64,) and len(set(background.tolist())) == 1
    assert grid[0, 7] == background[0]  # top-right corner: empty
    centres = [grid[int(obj.y) // 4, int(obj.x) // 4] for obj in objects]
    # Each object has its own class; every patch is background or one of the two objects.
    assert len({*centres, background[0]}) == 3
    assert set(grid.flatten().tolist()) == {*centres, background[0]}
    # The class changes with the colour, the shape and the left-to-right rank alike.
    swapped = (objects[1], objects[0])
    for other in (
        (scenes.SceneObject("green", "square", 6.0, 6.0, 8.0), objects[1]),
        (scenes.SceneObject("red", "cross", 6.0, 6.0, 8.0), objects[1]),
        swapped,
    ):
        relabelled = pretrain.patch_labels(other, image_size=32, patch_size=4).reshape(8, 8)
        assert relabelled[int(objects[0].y) // 4, int(objects[0].x) // 4] != centres[0]
    # The shape head's target: the shape alone, background its own class.
    shapes = pretrain.patch_shapes(torch.from_numpy(grid))
    assert [int(shapes[int(o.y) // 4, int(o.x) // 4]) for o in objects] == [scenes.SHAPES.index(o.shape) for o in objects]
    assert int(shapes[0, 7]) == len(scenes.SHAPES)


def test_pretrain_icl_lm_writes_a_loadable_llama_trained_on_episodes(tokenizer, tmp_path):
    tok = pretrain.default_tokenizer()
    out = pretrain.pretrain_icl_lm(tok, tmp_path / "icl", steps=2, batch_size=4, corpus_lines=40, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    summary = json.loads((out / pretrain.SUMMARY_FILE).read_text())
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    # Two steps form no lookup: the recorded check reads about chance, far below the bar.
    assert summary["seed"] == 0 and summary["in_words_accuracy"] < pretrain.ICL_MIN_ACCURACY


def _icl_build_scoring(accuracy_by_seed: dict[int, float], calls: list[int]):
    """A cheap `pretrain_icl_lm` (2 steps) whose recorded in-words accuracy is given per seed."""
    build = pretrain.pretrain_icl_lm

    def fake(tokenizer, out_dir, *, seed, **kwargs):
        calls.append(seed)
        out = build(tokenizer, out_dir, **{**kwargs, "seed": seed, "corpus_lines": 40, "batch_size": 4})
        summary = json.loads((out / pretrain.SUMMARY_FILE).read_text())
        (out / pretrain.SUMMARY_FILE).write_text(json.dumps({**summary, "in_words_accuracy": accuracy_by_seed[seed]}))
        return out

    return fake


def test_ensure_icl_lm_retries_the_next_seed_until_the_lookup_forms(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pretrain, "pretrain_icl_lm", _icl_build_scoring({1: 0.2, 2: 0.85, 3: 0.9}, calls))
    with pytest.warns(UserWarning, match="seed 1: 8-shot accuracy in words 0.20"):
        out = pretrain.ensure_icl_lm(tmp_path, progress=False, steps=2, seeds=(1, 2, 3))
    assert calls == [1, 2]  # stopped at the first seed that formed the lookup
    assert json.loads((out / pretrain.SUMMARY_FILE).read_text())["seed"] == 2
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"


def test_ensure_icl_lm_fails_loudly_and_caches_nothing_when_no_seed_forms_the_lookup(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pretrain, "pretrain_icl_lm", _icl_build_scoring({1: 0.2, 2: 0.25, 3: 0.3}, calls))
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=r"formed no lookup.*\{1: 0.2, 2: 0.25, 3: 0.3\}"):
        pretrain.ensure_icl_lm(tmp_path, progress=False, steps=2, seeds=(1, 2, 3))
    assert calls == [1, 2, 3] and list(tmp_path.iterdir()) == []


def test_ensure_icl_lm_builds_once_and_resolves_by_name(tmp_path, monkeypatch):
    calls = []
    build = pretrain.pretrain_icl_lm

    def counted(*args, **kwargs):
        calls.append(1)
        return build(*args, **{**kwargs, "corpus_lines": 40, "batch_size": 4})

    monkeypatch.setattr(pretrain, "pretrain_icl_lm", counted)
    first = pretrain.ensure_icl_lm(tmp_path, progress=False, steps=2, min_accuracy=0.0)
    lm, vision = pretrain.resolve_backbone_dirs("icl", cache_dir=tmp_path, progress=False)
    assert Path(lm) == first == tmp_path / pretrain.ICL_VERSION / "lm" and vision is None
    assert len(calls) == 1  # the second call found the cache
    assert not list(tmp_path.glob("*.partial-*"))
    with pytest.raises(ValueError, match="model.vision"):
        pretrain.resolve_backbone_dirs(str(first), "icl")


def test_a_backbone_that_is_no_local_directory_is_named_before_anything_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "ensure_default_backbones", lambda *a, **k: pytest.fail("built the defaults"))
    lm, vision = tmp_path / "lm", tmp_path / "vision"
    lm.mkdir()
    vision.mkdir()
    assert pretrain.resolve_backbone_dirs(str(lm), str(vision)) == (str(lm), str(vision))
    # not transformers' "Repo id must be in the form ...": the key, and what it takes
    with pytest.raises(FileNotFoundError, match=r"model.lm: expected a local directory, 'default' or 'icl', "
                                                r"got 'no/such/lm'"):
        pretrain.resolve_backbone_dirs("no/such/lm", "default")
    with pytest.raises(FileNotFoundError, match=r"model.vision: expected a local directory or 'default', "
                                                r"got 'no/such/tower'"):
        pretrain.resolve_backbone_dirs("default", "no/such/tower")


def test_a_built_cache_gets_the_modes_the_umask_gives(tmp_path):
    # mkdtemp makes a 0700 folder and safetensors 0600 files: the cache would be its owner's only
    from safetensors.torch import save_file

    def build(partial):
        (partial / "lm").mkdir()
        save_file({"w": torch.zeros(2)}, str(partial / "lm" / "model.safetensors"))

    old = os.umask(0o022)
    try:
        pretrain._build_atomically(tmp_path / "cache", build)
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
             for p in [tmp_path / "cache", *(tmp_path / "cache").rglob("*")]}
    assert modes == {"cache": 0o755, "cache/lm": 0o755, "cache/lm/model.safetensors": 0o644}
