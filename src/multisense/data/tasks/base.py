"""The task interface: shots, episodes for few-shot evaluation, interleaved training documents,
the same episodes in words; and the words every task may emit.

Shape letters: N shots or images, F frames, C channels (3), H height, W width.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ...tokens import MEDIA_MARKER as MARKER
from .. import scenes
from ..collate import Document, Sample
from ..images import to_pixel_values

SPLITS = ("train", "eval")
# Between shots. "." is a word the LM already knows, and no answer or prompt ends in one.
SEPARATOR = " . "
MAX_TRAINING_SHOTS = 8

# Nonce words for fewshot_mapped: no prior meaning, so a label is only learnable in context.
LABEL_WORDS = ("dax", "wug", "blicket", "fep", "toma", "zup", "kiki", "bouba")
ORDINALS = ("first", "second", "third", "fourth")
# (dy, dx) per step, rows growing downwards; the first four are the default 4-way task.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1),
    "up left": (-1, -1), "up right": (-1, 1), "down left": (1, -1), "down right": (1, 1),
}
DIGITS = tuple(str(d) for d in range(10))
SUMS = tuple(str(s) for s in range(19))


VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys([
    *scenes.COLOURS, *scenes.SHAPES, *LABEL_WORDS, *ORDINALS, *SUMS,
    *(word for name in DIRECTIONS for word in name.split()),
    "yes", "no", ":", ".", "?", "shape", "colour", "label", "direction", "digit",
    "question", "answer", "is", "the", "same", "as", "plus",
]))


@dataclasses.dataclass
class Shot:
    media: list[torch.Tensor]  # each [F, C, H, W] in [-1, 1]
    prompt: str  # one MARKER per media item, in order
    answer: str
    words: str | None = None  # the prompt with each marker replaced by one word naming its media


    @property
    def text(self) -> str:
        return f"{self.prompt} {self.answer}"


def _media(shots: list[Shot]) -> list[torch.Tensor]:
    return [m for s in shots for m in s.media]


class Task:
    """One task: subclasses set `name`, `answers` (None if open) and implement
    `episode_shots` (images) and `text_shots` (text only)."""

    name = ""
    answers: tuple[str, ...] | None = None
    frames = 1

    def __init__(self, *, image_size: int = 32, noise: float = 0.05):
        if image_size < 16:
            raise ValueError(f"image_size: expected at least 16 pixels, got {image_size}")
        self.image_size = image_size
        self.noise = noise

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, image_size={self.image_size}, frames={self.frames})"

    # ---- what a task implements --------------------------------------------------------

    def episode_shots(self, rng: np.random.Generator, shots: int, split: str) -> list[Shot]:
        """`shots` demonstrations then the query, sharing one episode (labels, image pool)."""
        raise NotImplementedError

    def text_shots(self, rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
        """`count` (prompt, answer) pairs of one episode in words: each marker replaced by a
        description of its media, the answer the one the media would give."""
        raise NotImplementedError

    def word_episode(self, rng: np.random.Generator, shots: int, split: str) -> list[tuple[str, str]]:
        """`shots` demonstrations then the query as (prompt, answer) pairs in words, for
        `eval.fewshot.InWords`; tasks whose shots carry their words give the very episode
        `episode_shots` draws from the same generator (ClassificationTask)."""
        return self.text_shots(rng, shots + 1)

    # ---- shared renderings -------------------------------------------------------------

    def _shots(self, rng: np.random.Generator, shots: int, split: str) -> list[Shot]:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if shots < 0:
            raise ValueError(f"shots: expected a count >= 0, got {shots}")
        return self.episode_shots(rng, int(shots), split)

    def shot(self, rng: np.random.Generator, split: str) -> Shot:
        return self._shots(rng, 0, split)[0]

    def episode(self, rng: np.random.Generator, shots: int, split: str) -> Sample:
        """k demonstrations then the query prompt; the target is the query's answer."""
        *demos, query = self._shots(rng, shots, split)
        prompt = SEPARATOR.join([*(d.text for d in demos), query.prompt])
        return Sample(prompt, query.answer, _media([*demos, query]))

    def training_document(self, rng: np.random.Generator, split: str = "train",
                          max_shots: int = MAX_TRAINING_SHOTS) -> Document:
        """An episode of 0..max_shots demonstrations plus a query, every answer written out."""
        items = self._shots(rng, int(rng.integers(0, max_shots + 1)), split)
        words = None
        if all(s.words is not None for s in items):  # the same episode in words, for distillation
            words = SEPARATOR.join(f"{s.words} {s.answer}" for s in items)
        return Document(SEPARATOR.join(s.text for s in items), _media(items), words=words)

    def text_line(self, rng: np.random.Generator, max_shots: int = 3) -> str:
        """A text-only episode of 1..max_shots+1 shots, media described in words."""
        pairs = self.text_shots(rng, int(rng.integers(0, max_shots + 1)) + 1)
        text = SEPARATOR.join(f"{prompt} {answer}" for prompt, answer in pairs)
        return " ".join(w for w in text.split() if w != MARKER)

    def _render(self, obj, rng: np.random.Generator) -> torch.Tensor:
        """One object on its own canvas: one frame [1, C, H, W] in [-1, 1]."""
        return to_pixel_values(scenes.render((obj,), rng, image_size=self.image_size, noise=self.noise)[None])

    def _one_object(self, rng: np.random.Generator, **attributes):
        obj = scenes.sample_objects(rng, image_size=self.image_size, min_objects=1, max_objects=1)[0]
        return dataclasses.replace(obj, **attributes)


class ClassificationTask(Task):
    """A fixed prompt and one class per shot; `labels(rng)` names the classes for one episode."""

    classes: tuple[str, ...] = ()
    prompt = ""

    def labels(self, rng: np.random.Generator) -> tuple[str, ...]:
        return self.classes

    def draw(self, rng: np.random.Generator, classes: np.ndarray, split: str) -> list[list[torch.Tensor]]:
        """The media of one shot per entry of `classes` (class indices)."""
        raise NotImplementedError

    def episode_shots(self, rng: np.random.Generator, shots: int, split: str) -> list[Shot]:
        labels = self.labels(rng)
        n = len(self.classes)
        # Demonstrations tile the classes (a permutation, then another, ...), shuffled, so k >= n
        # shots show every class; the query's class is drawn on its own, so the demonstrations
        # say nothing about which class it is.
        tiles = [rng.permutation(n) for _ in range(max(1, math.ceil(shots / n)))]
        demos = rng.permutation(np.concatenate(tiles)[:shots])
        classes = np.append(demos, rng.integers(n))
        media = self.draw(rng, classes, split)
        return [Shot(m, self.prompt, labels[c], words=self.prompt.replace(MARKER, self.classes[c]))
                for m, c in zip(media, classes)]

    def text_shots(self, rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
        labels = self.labels(rng)
        return [(self.prompt.replace(MARKER, self.classes[c]), labels[c])
                for c in rng.integers(len(self.classes), size=count)]

    def word_episode(self, rng: np.random.Generator, shots: int, split: str) -> list[tuple[str, str]]:
        # The same classes, labels and order as with images: demonstrations tile the classes alike.
        return [(shot.words, shot.answer) for shot in self._shots(rng, shots, split)]
