"""Seeded procedural scenes: coloured shapes on a dark noisy canvas, with captions and Q&A.

A scene holds one to three objects, each with a distinct colour and a distinct shape, so
"the circle" or "the red one" always names exactly one object. Text is word-level: words
are separated by single spaces and punctuation is a word of its own.

Shape letters: N scenes, H height, W width, K candidate placements, M objects in a scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.16, 0.14),
    "green": (0.16, 0.78, 0.22),
    "blue": (0.22, 0.38, 0.98),
    "yellow": (0.96, 0.90, 0.18),
    "purple": (0.64, 0.24, 0.86),
    "orange": (1.00, 0.56, 0.08),
}
SHAPES = ("circle", "square", "triangle", "cross")
MAX_OBJECTS = 3  # a scene holds one to three objects
NUMBER_WORDS = ("zero", "one", "two", "three")

# Every possible answer per question kind, so that chance accuracy can be computed.
ANSWER_SETS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": NUMBER_WORDS[1:],  # scenes always hold one to three objects
    "position": ("yes", "no"),
}

# Every word the templates below can emit; a tokenizer built from this never sees <unk>.
VOCABULARY: tuple[str, ...] = (
    *COLOURS,
    *SHAPES,
    *NUMBER_WORDS,
    *("yes", "no"),
    *("a", "and", ",", ".", ":", "?", "caption", "question", "answer"),
    *("what", "colour", "shape", "is", "the", "how", "many", "shapes", "are", "there", "colours"),
    *("left", "of"),
)

# Object sizes (bounding-box side, pixels) at the reference resolution of 32 pixels.
_REFERENCE_SIZE = 32
_SIZE_RANGE = (7.0, 12.0)
# Centres of any two objects are at least this fraction of their mean size apart in x,
# so that "left of" never hinges on a pixel or two.
_MIN_X_SEPARATION = 0.6
# Candidate placements drawn at once; rejection sampling then needs one round nearly always.
_PLACEMENT_TRIES = 64
_BACKGROUND_RANGE = (0.0, 0.3)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    x: float  # centre, pixels from the left
    y: float  # centre, pixels from the top
    size: float  # side of the bounding box, pixels


@dataclass
class Scene:
    image: np.ndarray  # float32 [3, H, W] in [0, 1]
    objects: tuple[SceneObject, ...]  # sorted left to right by x


def sample_objects(
    rng: np.random.Generator, *, image_size: int = 32, min_objects: int = 1, max_objects: int = MAX_OBJECTS
) -> tuple[SceneObject, ...]:
    """Draw the objects of a scene (no rendering), sorted left to right."""
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError("scenes hold between one and three objects")
    count = int(rng.integers(min_objects, max_objects + 1))
    colours = rng.choice(len(COLOURS), size=count, replace=False)
    shapes = rng.choice(len(SHAPES), size=count, replace=False)
    xs, ys, sizes = _place(rng, count=count, image_size=image_size)
    names = tuple(COLOURS)
    objects = (
        SceneObject(colour=names[c], shape=SHAPES[s], x=float(x), y=float(y), size=float(size))
        for c, s, x, y, size in zip(colours, shapes, xs, ys, sizes)
    )
    return tuple(sorted(objects, key=lambda obj: obj.x))


def _place(rng: np.random.Generator, *, count: int, image_size: int) -> tuple[np.ndarray, ...]:
    """Non-overlapping, x-separated centres and sizes for `count` objects (vectorised rejection)."""
    scale = image_size / _REFERENCE_SIZE
    gap = 1.0 * scale  # at least one clear pixel between bounding boxes
    while True:
        sizes = rng.uniform(*_SIZE_RANGE, size=(_PLACEMENT_TRIES, count)) * scale  # [K, M]
        half = sizes / 2
        xs = rng.uniform(half, image_size - half)
        ys = rng.uniform(half, image_size - half)
        reach = half[:, :, None] + half[:, None, :]  # [K, M, M] centre distance at which boxes touch
        dx = np.abs(xs[:, :, None] - xs[:, None, :])
        dy = np.abs(ys[:, :, None] - ys[:, None, :])
        apart = (dx >= reach + gap) | (dy >= reach + gap)
        ordered = dx >= _MIN_X_SEPARATION * reach
        ok = (apart & ordered) | np.eye(count, dtype=bool)  # an object never clashes with itself
        valid = ok.all(axis=(1, 2))
        if valid.any():
            k = int(np.argmax(valid))
            return xs[k], ys[k], sizes[k]


def _shape_mask(obj: SceneObject, *, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Boolean [H, W] mask of one object, from pixel-centre coordinate grids."""
    dx = cols - obj.x
    dy = rows - obj.y
    half = obj.size / 2
    if obj.shape == "circle":
        return dx**2 + dy**2 <= half**2
    if obj.shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if obj.shape == "triangle":
        # Apex at the top, base at the bottom: the half-width grows linearly downwards.
        return (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
    if obj.shape == "cross":
        arm = obj.size / 6  # half the thickness of each bar
        vertical = (np.abs(dx) <= arm) & (np.abs(dy) <= half)
        horizontal = (np.abs(dy) <= arm) & (np.abs(dx) <= half)
        return vertical | horizontal
    raise ValueError(f"unknown shape {obj.shape!r}")


def object_masks(objects: tuple[SceneObject, ...], *, image_size: int = 32) -> np.ndarray:
    """Boolean [M, H, W] pixel masks of the objects, in the order given (the pixels `render` paints)."""
    centres = np.arange(image_size, dtype=np.float32) + 0.5
    rows, cols = np.meshgrid(centres, centres, indexing="ij")  # [H, W] each
    masks = [_shape_mask(obj, rows=rows, cols=cols) for obj in objects]
    return np.stack(masks) if masks else np.zeros((0, image_size, image_size), dtype=bool)


def render(
    objects: tuple[SceneObject, ...], rng: np.random.Generator, *, image_size: int = 32, noise: float = 0.05
) -> np.ndarray:
    """Paint objects onto a random dark background and add gaussian noise: float32 [3, H, W]."""
    background = rng.uniform(*_BACKGROUND_RANGE)
    image = np.full((3, image_size, image_size), background, dtype=np.float32)
    for obj, mask in zip(objects, object_masks(objects, image_size=image_size)):
        image[:, mask] = np.asarray(COLOURS[obj.colour], dtype=np.float32)[:, None]
    image += rng.normal(0.0, noise, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def make_scene(
    rng: np.random.Generator,
    *,
    image_size: int = 32,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    noise: float = 0.05,
) -> Scene:
    objects = sample_objects(rng, image_size=image_size, min_objects=min_objects, max_objects=max_objects)
    return Scene(image=render(objects, rng, image_size=image_size, noise=noise), objects=objects)


def make_scenes(n: int, seed: int, image_size: int = 32) -> tuple[np.ndarray, list[Scene]]:
    """`n` seeded scenes and their images stacked as float32 [N, 3, H, W]."""
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, image_size=image_size) for _ in range(n)]
    return np.stack([scene.image for scene in scenes]), scenes


# ---- text ---------------------------------------------------------------------------------


def _describe(obj: SceneObject) -> str:
    return f"a {obj.colour} {obj.shape}"


def describe_objects(objects: tuple[SceneObject, ...]) -> str:
    """Left-to-right caption of objects: "a red circle , a blue square and a green triangle"."""
    phrases = [_describe(obj) for obj in objects]
    if len(phrases) == 1:
        return phrases[0]
    return " , ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene) -> str:
    return describe_objects(scene.objects)


class QA(NamedTuple):
    """One question about a scene. The prompt restates `subject` (the object the question names)
    right before the one-word `answer`: "question : what colour is the circle ? answer : circle red"."""

    kind: str
    question: str
    subject: str  # "" for count questions, which name no object
    answer: str


def questions_about(objects: tuple[SceneObject, ...], rng: np.random.Generator) -> list[QA]:
    """One QA per kind about randomly chosen objects."""
    target = objects[int(rng.integers(len(objects)))]
    qas = [
        QA("colour", f"what colour is the {target.shape} ?", target.shape, target.colour),
        QA("shape", f"what shape is the {target.colour} one ?", target.colour, target.shape),
        QA("count", "how many shapes are there ?", "", NUMBER_WORDS[len(objects)]),
    ]
    if len(objects) >= 2:
        # Choose the answer first, then order the pair to match it, so yes and no are balanced.
        left, right = sorted(rng.choice(len(objects), size=2, replace=False))
        answer = "yes" if rng.random() < 0.5 else "no"
        first, second = objects[left], objects[right]
        if answer == "no":
            first, second = second, first
        question = f"is the {first.colour} {first.shape} left of the {second.colour} {second.shape} ?"
        qas.append(QA("position", question, second.shape, answer))
    return qas


def question_answers(scene: Scene, rng: np.random.Generator) -> list[QA]:
    return questions_about(scene.objects, rng)


def order_line(rng: np.random.Generator) -> str:
    """The colours, or the shapes, in their fixed cyclic order from a random start:
    "colours : blue purple red green ...".

    In every other line colours are interchangeable, and a tiny LM trained on those alone gives
    the six colour words nearly the same hidden states after its first layer, so no
    cross-attention query can tell "the red one" from "the blue one". Here the next word
    depends on which colour (or shape) came before (measured: docs/history.md).
    """
    words, name = (tuple(COLOURS), "colours") if rng.random() < 0.5 else (SHAPES, "shapes")
    start = int(rng.integers(len(words)))
    return f"{name} : " + " ".join(words[(start + i) % len(words)] for i in range(len(words) + 2)) + " ."


# ---- prompt templates (shared with the Flamingo training) ---------------------------------


def caption_prompt() -> str:
    return "caption :"


def caption_text(scene: Scene) -> str:
    return _caption_line(scene.objects)


def _caption_line(objects: tuple[SceneObject, ...]) -> str:
    return f"{caption_prompt()} {describe_objects(objects)} ."


def qa_prompt(question: str, subject: str = "") -> str:
    """"question : {question} answer : {subject}": the prompt ends with the object the question
    names, so that the answer is predicted at that word. The gated cross-attention looks up with
    one query per token, and the frozen tiny LM carries little of a word to the tokens after it:
    its hidden state at "answer :" hardly varies with the named shape, at the shape word itself
    far more. Ending with "answer :", the demo's colour and shape questions were answered by
    naming a random object present (measured: docs/history.md)."""
    return f"question : {question} answer :" + (f" {subject}" if subject else "")


def qa_text(question: str, answer: str, subject: str = "") -> str:
    return f"{qa_prompt(question, subject)} {answer}"


def text_corpus(n: int, seed: int) -> list[str]:
    """`n` text-only lines for language-model pretraining: captions and Q&A of unrendered scenes.

    Each line is drawn uniformly among the scene's caption and its questions, so captions make
    up roughly a quarter of the corpus and every question kind appears about as often.
    """
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        objects = sample_objects(rng)
        qas = questions_about(objects, rng)
        choice = int(rng.integers(len(qas) + 1))
        if choice == len(qas):
            lines.append(_caption_line(objects))
        else:
            qa = qas[choice]
            lines.append(qa_text(qa.question, qa.answer, qa.subject))
    return lines
