"""The README's Python snippets run as written, on tiny backbones saved where its paths point."""

import re
from pathlib import Path

import torch
import transformers as tf

import multisense as ms
from multisense.data.tokenizer import train_word_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_its_snippet():
    assert any("FlamingoModel.from_lm" in s for s in snippets())


def test_your_own_language_model_snippet_runs(tmp_path, monkeypatch):
    tok = train_word_tokenizer(["a photo of and this one"], vocabulary="a photo of and this one".split())
    torch.manual_seed(0)
    lm = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=128, vocab_size=len(tok),
                                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    clip = tf.CLIPVisionModel(tf.CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=24, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=48))
    lm.save_pretrained(tmp_path / "path/to/any-causal-lm")
    tok.save_pretrained(tmp_path / "path/to/any-causal-lm")
    clip.save_pretrained(tmp_path / "path/to/clip")
    monkeypatch.chdir(tmp_path)
    code = next(s for s in snippets() if "FlamingoModel.from_lm" in s)
    code = code.replace("224, 224", "32, 32")  # the tiny tower's image size
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert isinstance(namespace["model"], ms.FlamingoModel)
