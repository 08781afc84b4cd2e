"""The demo's task: captions and questions about procedural scenes, as Flamingo samples.

Every sample is one fresh scene behind an `<image>` marker, then either the caption prompt
or a question; the target is the caption or the one-word answer. Training draws new scenes
forever; evaluation uses scenes from a disjoint seed range.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ...tokens import MEDIA_MARKER
from .. import scenes
from ..collate import Sample, collate
from ..images import to_pixel_values

MARKER = MEDIA_MARKER
KINDS = ("caption", "colour", "shape", "count", "position")


def scene_sample(scene: scenes.Scene, kind: str, rng: np.random.Generator) -> Sample:
    """One sample of `kind` about `scene`; question kinds fall back to colour if the scene lacks them."""
    media = [to_pixel_values(scene.image[None])]  # one frame [1, C, H, W]
    if kind == "caption":
        return Sample(f"{MARKER} {scenes.caption_prompt()}", f"{scenes.caption(scene)} .", media)
    qas = {qa.kind: qa for qa in scenes.question_answers(scene, rng)}
    qa = qas.get(kind, qas["colour"])
    return Sample(f"{MARKER} {scenes.qa_prompt(qa.question, qa.subject)}", qa.answer, media)


# Where an object stands among the scene's objects: the answer to a position question follows
# from the place of the object it restates unless that is the middle one.
PLACES = ("only", "leftmost", "middle", "rightmost")
# Classes per attribute of `object_labels` (each also has a "no object" class after these).
OBJECT_CLASSES = (len(scenes.COLOURS), len(scenes.SHAPES), len(PLACES))


def _place(rank: int, count: int) -> int:
    if count == 1:
        return PLACES.index("only")
    return PLACES.index("leftmost" if rank == 0 else "rightmost" if rank == count - 1 else "middle")


def object_labels(scene: scenes.Scene) -> torch.Tensor:
    """[K, 3] (colour, shape, place) class of each object left to right, for
    `train.slots.LatentObjectLoss`; rows past the scene's objects hold the "no object" classes
    (OBJECT_CLASSES)."""
    colours, shapes, n = list(scenes.COLOURS), list(scenes.SHAPES), len(scene.objects)
    rows = [[colours.index(o.colour), shapes.index(o.shape), _place(k, n)] for k, o in enumerate(scene.objects)]
    rows += [list(OBJECT_CLASSES)] * (scenes.MAX_OBJECTS - n)
    return torch.tensor(rows)


def training_batches(tokenizer, *, batch_size: int, seed: int, image_size: int = 32,
                     caption_share: float = 0.4, with_objects: bool = False) -> Iterator[dict]:
    """Endless batches of fresh scenes: captions with probability caption_share, else a question.
    `with_objects`: also `object_labels` [B, 1, K, 3] (`object_labels`, one media item each)."""
    rng = np.random.default_rng(seed)
    questions = KINDS[1:]
    while True:
        samples, labels = [], []
        for _ in range(batch_size):
            scene = scenes.make_scene(rng, image_size=image_size)
            kind = "caption" if rng.random() < caption_share else questions[int(rng.integers(len(questions)))]
            samples.append(scene_sample(scene, kind, rng))
            if with_objects:
                labels.append(object_labels(scene))
        batch = collate(samples, tokenizer)
        if with_objects:
            batch["object_labels"] = torch.stack(labels)[:, None]
        yield batch


def evaluation_set(kind: str, n: int, *, seed: int, image_size: int = 32) -> list[Sample]:
    """`n` held-out samples of one kind (position questions only from scenes with >= 2 objects)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        scene = scenes.make_scene(rng, image_size=image_size, min_objects=2 if kind == "position" else 1)
        out.append(scene_sample(scene, kind, rng))
    return out
