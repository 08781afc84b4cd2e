"""The embedded backbones shipped with the package: complete, loadable through from_pretrained,
made by the current recipe, and as good as their manifest says; a rebuild (slow) gets there too."""

import json

import pytest
import torch
import transformers

from multisense import backbones
from multisense.backbones import build, language, probes

SHIPPED = backbones.Backbones.at()
MANIFEST = json.loads((backbones.WEIGHTS / backbones.MANIFEST).read_text())


def test_the_shipped_set_is_the_current_recipe_and_loads_like_any_checkpoint():
    assert MANIFEST["version"] == build.VERSION, "the recipe changed: rebuild with `multisense backbones build`"
    lm = transformers.AutoModelForCausalLM.from_pretrained(SHIPPED.lm)
    icl = transformers.AutoModelForCausalLM.from_pretrained(SHIPPED.icl)
    tower = transformers.CLIPVisionModel.from_pretrained(SHIPPED.vision)
    assert (lm.config.model_type, icl.config.model_type, tower.config.image_size) == ("gpt2", "llama", 32)
    t5 = transformers.AutoModelForSeq2SeqLM.from_pretrained(SHIPPED.t5)
    assert t5.config.model_type == "t5" and t5.config.decoder_start_token_id == t5.config.pad_token_id
    # the T5 reads the three languages' word tokenizer and T5's sentinels
    from multisense.backbones.seq2seq import t5_tokenizer
    assert transformers.AutoTokenizer.from_pretrained(SHIPPED.t5).get_vocab() == t5_tokenizer().get_vocab()
    # both LMs read the one word tokenizer the recipe builds
    expected = language.default_tokenizer().get_vocab()
    for folder in (SHIPPED.lm, SHIPPED.icl):
        assert transformers.AutoTokenizer.from_pretrained(folder).get_vocab() == expected


def test_the_shipped_manifest_names_no_path_of_the_machine_that_built_it():
    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    assert not [s for s in strings(MANIFEST) if "/" + "tmp" in s or "/work" in s or "/home" in s or "/root" in s]
    for part in build.PARTS:
        config = json.loads((getattr(SHIPPED, part) / "config.json").read_text())
        assert not str(config.get("_name_or_path", "")).startswith("/")


def test_the_shipped_probes_meet_their_targets_and_are_measured_again_here():
    parts = MANIFEST["parts"]
    assert parts["vision"]["shape_probe"] >= 0.95  # an object's shape, read linearly off its tokens
    assert parts["icl"]["in_words_accuracy"] >= build.ICL_MIN_ACCURACY  # the in-context lookup formed
    tower = transformers.CLIPVisionModel.from_pretrained(SHIPPED.vision).eval()
    assert probes.shape_probe(tower) == pytest.approx(parts["vision"]["shape_probe"], abs=0.01)
    icl = transformers.AutoModelForCausalLM.from_pretrained(SHIPPED.icl).eval()
    tok = transformers.AutoTokenizer.from_pretrained(SHIPPED.icl)
    assert probes.in_words_accuracy(icl, tok) == pytest.approx(parts["icl"]["in_words_accuracy"], abs=0.03)
    lm = transformers.AutoModelForCausalLM.from_pretrained(SHIPPED.lm).eval()
    assert probes.heldout_loss(lm, transformers.AutoTokenizer.from_pretrained(SHIPPED.lm)) == pytest.approx(
        parts["lm"]["heldout_loss"], abs=0.01)
    t5 = transformers.T5ForConditionalGeneration.from_pretrained(SHIPPED.t5).eval()
    assert parts["t5"]["denoising_accuracy"] >= 0.85  # the hidden spans written back, teacher-forced
    assert probes.denoising_accuracy(t5, transformers.AutoTokenizer.from_pretrained(SHIPPED.t5)) == pytest.approx(
        parts["t5"]["denoising_accuracy"], abs=0.01)


@pytest.mark.slow
def test_a_rebuild_reaches_the_shipped_probes(tmp_path):
    """The full recipe from scratch (19 minutes on one thread): the same probes within noise."""
    torch.set_num_threads(1)  # as the shipped set was built (manifest: machine.threads)
    out = build.build(tmp_path / "set", progress=False)
    rebuilt = json.loads((out / backbones.MANIFEST).read_text())["parts"]
    shipped = MANIFEST["parts"]
    assert rebuilt["vision"]["shape_probe"] >= shipped["vision"]["shape_probe"] - 0.02
    assert rebuilt["icl"]["in_words_accuracy"] >= build.ICL_MIN_ACCURACY
    assert rebuilt["lm"]["heldout_loss"] <= shipped["lm"]["heldout_loss"] + 0.05
    assert rebuilt["t5"]["denoising_accuracy"] >= shipped["t5"]["denoising_accuracy"] - 0.02
