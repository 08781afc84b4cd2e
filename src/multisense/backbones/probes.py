"""Measures of the embedded backbones, recorded in a build's manifest and checked by the tests
that rebuild them:

- `in_words_accuracy`: an LM alone on held-out few-shot episodes in words (`fewshot_mapped` at 8
  shots, closed-set accuracy as `multisense eval --in-words` measures it); chance 1/8, an LM
  with the in-context lookup reads about 1.0, one without it about 0.2;
- `shape_probe`: a linear probe of the vision tower, an object's shape read off the mean of its
  patch tokens (logistic regression, fresh training and held-out scenes); chance 1/4;
- `heldout_loss`: the GPT-2's next-token loss (nats per token) on held-out corpus lines;
- `denoising_accuracy`: the T5's teacher-forced token accuracy at writing back the spans hidden
  from held-out lines of the three languages (span corruption, its pretraining task).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.images import to_pixel_values
from ..data.scenes import MAX_OBJECTS, SHAPES, render, sample_objects
from ..data.tasks import FewShotMapped
from ..tokens import IGNORE_INDEX
from .language import lm_batches, pretrain_corpus
from .vision import BACKGROUND, patch_labels

ICL_CHECK_SHOTS = 8


def in_words_accuracy(model, tokenizer, task: FewShotMapped | None = None, *, shots: int = ICL_CHECK_SHOTS,
                      samples: int = 100) -> float:
    from ..eval.fewshot import InWords, evaluate

    result = evaluate(model, tokenizer, InWords(task or FewShotMapped()), shots=(shots,), seeds=(0,), samples=samples)
    return result["shots"][shots]["accuracy"]["mean"]


@torch.no_grad()
def _object_tokens(tower, scenes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean patch token [N, D] and shape index [N] of every object of `scenes` fresh scenes."""
    size, patch = tower.config.image_size, tower.config.patch_size
    rng = np.random.default_rng(seed)
    feats, shapes = [], []
    for start in range(0, scenes, 128):
        objects = [sample_objects(rng, image_size=size) for _ in range(min(128, scenes - start))]
        images = np.stack([render(o, rng, image_size=size) for o in objects])
        tokens = tower(pixel_values=to_pixel_values(images)).last_hidden_state[:, 1:].numpy()  # [B, P, D]
        for scene, toks in zip(objects, tokens):
            labels = patch_labels(scene, image_size=size, patch_size=patch)
            for rank, obj in enumerate(scene):
                under = (labels != BACKGROUND) & (labels % MAX_OBJECTS == rank)  # the patches of this object
                if under.any():
                    feats.append(toks[under].mean(0))
                    shapes.append(SHAPES.index(obj.shape))
    return np.stack(feats), np.array(shapes)


def shape_probe(tower, *, train_scenes: int = 3000, test_scenes: int = 1000, seed: int = 0) -> float:
    """Held-out accuracy of a linear probe reading each object's shape off its mean patch token."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = _object_tokens(tower, train_scenes, seed)
    x_test, y_test = _object_tokens(tower, test_scenes, seed + 1)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


@torch.no_grad()
def heldout_loss(model, tokenizer, *, lines: int = 2000, seed: int = 12345) -> float:
    """Mean next-token loss (nats per token) on corpus lines the LM was not trained on."""
    batch = next(lm_batches(tokenizer, pretrain_corpus(lines, seed), batch_size=64, seed=seed))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                                   ignore_index=IGNORE_INDEX))


@torch.no_grad()
def denoising_accuracy(model, tokenizer, *, lines: int = 512, seed: int = 12345) -> float:
    """Share of the hidden spans' tokens (sentinels and eos included) the T5 predicts, teacher-forced,
    on corrupted lines it was not trained on."""
    from ..data.languages import text_corpus
    from .seq2seq import denoising_batches

    batch = next(denoising_batches(tokenizer, text_corpus(lines, seed), batch_size=lines, seed=seed))
    logits = model(**batch).logits
    keep = batch["labels"] != IGNORE_INDEX
    return float((logits.argmax(-1) == batch["labels"])[keep].float().mean())
