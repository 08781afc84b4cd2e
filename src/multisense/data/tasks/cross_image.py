"""Questions that need more than the latest image: is the j-th object the same colour (or
shape) as the i-th? Yes and no balanced.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import scenes
from .base import MARKER, ORDINALS, Shot, Task


class CrossImage(Task):
    """Several one-object images, then whether the j-th object shares an attribute with the i-th."""

    name = "cross_image"
    answers = ("yes", "no")

    def __init__(self, *, images: int = 2, attributes: tuple[str, ...] = ("colour", "shape"),
                 image_size: int = 32, noise: float = 0.05):
        super().__init__(image_size=image_size, noise=noise)
        if not 2 <= images <= len(ORDINALS):
            raise ValueError(f"images: expected 2 to {len(ORDINALS)}, got {images}")
        if not attributes or not set(attributes) <= {"colour", "shape"}:
            raise ValueError(f"attributes: expected a non-empty subset of ('colour', 'shape'), got {attributes!r}")
        self.images, self.attributes = images, tuple(attributes)

    def _question(self, rng: np.random.Generator) -> tuple[int, int, str, bool, str]:
        first, second = sorted(rng.choice(self.images, size=2, replace=False))
        attribute = self.attributes[int(rng.integers(len(self.attributes)))]
        same = bool(rng.random() < 0.5)  # the answer is drawn first, so yes and no are balanced
        prompt = (" ".join([MARKER] * self.images) + f" question : is the {ORDINALS[second]} shape"
                  f" the same {attribute} as the {ORDINALS[first]} ? answer :")
        return int(first), int(second), attribute, same, prompt

    def episode_shots(self, rng, shots, split):
        out = []
        for _ in range(shots + 1):
            first, second, attribute, same, prompt = self._question(rng)
            objects = [self._one_object(rng) for _ in range(self.images)]
            value = getattr(objects[first], attribute)
            if same:
                objects[second] = dataclasses.replace(objects[second], **{attribute: value})
            elif getattr(objects[second], attribute) == value:
                values = scenes.SHAPES if attribute == "shape" else tuple(scenes.COLOURS)
                others = [v for v in values if v != value]
                objects[second] = dataclasses.replace(objects[second], **{attribute: others[rng.integers(len(others))]})
            out.append(Shot([self._render(o, rng) for o in objects], prompt, "yes" if same else "no"))
        return out

    def text_shots(self, rng, count):
        out = []
        for _ in range(count):
            first, second, attribute, same, prompt = self._question(rng)
            objects = [self._one_object(rng) for _ in range(self.images)]
            value = getattr(objects[first], attribute)
            for i, obj in enumerate(objects):
                objects[i] = obj = dataclasses.replace(obj, **{attribute: value}) if i == second and same else obj
            same = getattr(objects[second], attribute) == value  # a random second object may match anyway
            for obj in objects:
                prompt = prompt.replace(MARKER, f"{obj.colour} {obj.shape}", 1)
            out.append((prompt, "yes" if same else "no"))
        return out
