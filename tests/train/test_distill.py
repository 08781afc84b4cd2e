"""In-words distillation: zero exactly when the images read like the words, measured at the
media markers only, padding-blind, and trainable end to end."""

import csv

import numpy as np
import pytest
import torch

from multisense.config import load_config
from multisense.data.collate import Document, collate
from multisense.data.tasks import get_task
from multisense.train.distill import InWordsDistillation, hidden_state_distance
from multisense.train.trainer import TrainConfig, build_model, train
from tests.train.backbones import save_tiny_backbones
from tests.train.test_trainer import overrides


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return save_tiny_backbones(tmp_path_factory.mktemp("distill"))


def test_distance_is_zero_on_equal_states_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    teacher = tuple(torch.randn(2, 5, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert hidden_state_distance(teacher, teacher, mask) == 0
    student = tuple(t + 0.1 * torch.randn(t.shape, generator=g) for t in teacher)
    d = hidden_state_distance(student, teacher, mask)
    assert d > 0
    padded = tuple(s.clone() for s in student)
    for s in padded:
        s[0, 3:] = 1e3  # padding positions may hold anything
    assert torch.equal(hidden_state_distance(padded, teacher, mask), d)


def test_loss_is_zero_on_text_alone_and_trains_only_the_new_parts(backbones, tmp_path):
    cfg = load_config(TrainConfig, None, overrides(backbones, tmp_path, **{"data.task": "fewshot_mapped",
                                                                           "data.task_args": "{}"}))
    model, tok = build_model(cfg.model, progress=False)
    for block in model.gated_layers:  # open gates: media would change every later token
        block.attn_gate.alpha.data.fill_(0.5)
    distill = InWordsDistillation(model, 1.0)
    task = get_task("fewshot_mapped")
    rng = np.random.default_rng(0)
    lines = [task.text_line(rng) for _ in range(3)]  # no media: the model is the frozen LM
    text = collate([Document(line, words=line) for line in lines], tok, words=True)
    text.pop("labels")
    assert distill(**text).aux_loss.item() == 0.0
    docs = [task.training_document(np.random.default_rng(i)) for i in range(3)]
    batch = collate(docs, tok, words=True)
    batch.pop("labels")
    loss = distill(**batch).aux_loss
    assert loss.item() > 0
    loss.backward()  # reaches the resampler and gated blocks, never the frozen LM
    assert all(p.grad is None for p in model.lm.parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.resampler.parameters())


def test_loss_is_zero_when_every_image_reads_like_its_word(backbones, tmp_path):
    cfg = load_config(TrainConfig, None, overrides(backbones, tmp_path, **{"data.task": "fewshot_mapped",
                                                                           "data.task_args": "{}"}))
    model, tok = build_model(cfg.model, progress=False)  # gates closed: a marker reads as its embedding
    word = "circle"
    with torch.no_grad():
        model.marker_embedding.copy_(model.lm.get_input_embeddings().weight[tok.convert_tokens_to_ids(word)])
    image = torch.zeros(1, 3, 32, 32)
    docs = [Document("label : <image> dax , label : <image> wug", [image, image],
                     words=f"label : {word} dax , label : {word} wug")]
    batch = collate(docs, tok, words=True)
    batch.pop("labels")
    assert InWordsDistillation(model, 1.0)(**batch).aux_loss.item() == 0.0
    # The markers only are compared: words that differ after the last marker change nothing there
    # (the LM is causal), so the loss stays zero although the sequences' states differ later on.
    other = collate([Document(docs[0].text, docs[0].media, words=f"label : {word} dax , label : {word} dax")],
                    tok, words=True)
    other.pop("labels")
    assert not torch.equal(other["words_input_ids"], batch["words_input_ids"])
    assert InWordsDistillation(model, 1.0)(**other).aux_loss.item() == 0.0


def test_training_with_distillation_logs_the_loss_and_rejects_tasks_without_words(backbones, tmp_path):
    extra = {"data.task": "fewshot_mapped", "data.task_args": "{}", "train.distill_words": 1.0, "train.steps": 2}
    summary = train(load_config(TrainConfig, None, overrides(backbones, tmp_path / "a", **extra)))
    assert all(np.isfinite(r["aux_loss"]) and r["aux_loss"] > 0 for r in summary["history"])
    rows = list(csv.DictReader(open(tmp_path / "a" / "logs" / "metrics.csv")))
    assert "aux_loss" in rows[0]
    with pytest.raises(ValueError, match="words"):
        train(load_config(TrainConfig, None, overrides(backbones, tmp_path / "b", **{
            "train.distill_words": 1.0, "data.task": "cross_image", "data.task_args": "{}"})))
