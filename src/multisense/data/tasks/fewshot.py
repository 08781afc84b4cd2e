"""Few-shot classification of one procedural object's shape or colour: natural labels
(`fewshot_shapes`) or nonce labels drawn per episode (`fewshot_mapped`, in-context only).
"""

from __future__ import annotations

import numpy as np

from .. import scenes
from .base import LABEL_WORDS, MARKER, SEPARATOR, ClassificationTask


class FewShotShapes(ClassificationTask):
    """The shape (or colour) of one procedural object, under its natural name."""

    name = "fewshot_shapes"

    def __init__(self, *, attribute: str = "shape", image_size: int = 32, noise: float = 0.05):
        super().__init__(image_size=image_size, noise=noise)
        values = {"shape": scenes.SHAPES, "colour": tuple(scenes.COLOURS)}
        if attribute not in values:
            raise ValueError(f"attribute: expected one of {tuple(values)}, got {attribute!r}")
        self.attribute = attribute
        self.classes = values[attribute]
        self.answers = self.classes
        self.prompt = f"{attribute} : {MARKER}"

    def draw(self, rng, classes, split):
        return [[self._render(self._one_object(rng, **{self.attribute: self.classes[c]}), rng)] for c in classes]


class FewShotMapped(FewShotShapes):
    """Shapes (or colours) named by nonce words assigned at random per episode: in-context only."""

    name = "fewshot_mapped"
    answers = LABEL_WORDS

    def __init__(self, *, attribute: str = "shape", image_size: int = 32, noise: float = 0.05):
        super().__init__(attribute=attribute, image_size=image_size, noise=noise)
        if len(self.classes) > len(LABEL_WORDS):
            raise ValueError(f"attribute: {attribute!r} has {len(self.classes)} classes, "
                             f"more than the {len(LABEL_WORDS)} label words")
        self.answers = LABEL_WORDS
        self.prompt = f"label : {MARKER}"

    def labels(self, rng):
        return tuple(LABEL_WORDS[i] for i in rng.choice(len(LABEL_WORDS), size=len(self.classes), replace=False))

    def text_line(self, rng: np.random.Generator, max_shots: int = 3) -> str:
        """Long episodes in words (8 to 16 shots, whatever `max_shots`): most labels then follow
        from an earlier shot of the same class, the signal that teaches a small LM in-context
        lookup (induction heads) within a short pretraining."""
        pairs = self.text_shots(rng, int(rng.integers(8, 17)))
        return SEPARATOR.join(f"{prompt} {answer}" for prompt, answer in pairs)
