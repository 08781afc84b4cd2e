"""Few-shot, cross-image, video and digit tasks behind one interface, for training and evaluation.

A task draws *shots*: one unit of media (each item [F, C, H, W] in [-1, 1]), a prompt holding one
`<image>` marker per media item, and an answer. Shots come from a numpy Generator and a split,
and a task renders them two ways, as Flamingo does (Alayrac et al. 2022):

- `episode(rng, shots, split)`: k demonstrations ("prompt answer", joined by " . ") and then the
  query prompt, as a `Sample` whose target is the query's answer: few-shot evaluation by
  prompting, no gradient step;
- `training_document(rng)`: an episode of 0..8 shots with every answer written out, as one
  interleaved `Document`; the loss falls on every answer given the shots before it, which is how
  the model learns to learn in context.
  Classification tasks also write the episode in words (`Document.words`: each marker replaced
  by its class word), the teacher's input for in-words distillation (`train/distill.py`).

Classification prompts end on the media marker ("digit : <image>" then "7"): the answer is
predicted at the marker, the one token that sees the image, and in words ("label : circle dax")
finding a label in context is the plain induction pattern "after the token seen before, the
token that followed it", which a small LM learns readily.

Tasks (`TASKS`, `get_task(name, **kwargs)`):

- `fewshot_shapes`: the shape (or colour) of one procedural object, natural labels;
- `fewshot_mapped`: the same images, but each episode labels the classes with nonce words drawn
  at random, so only the demonstrations tell the answer: 0 shots is chance by construction;
- `cross_image`: two (or more) images, then "is the second shape the same colour as the
  first ?", yes/no balanced: the answer needs more than the most recent image;
- `video`: one shape moving in one of 4 (or 8) directions over F frames, on a path centred near
  the canvas centre: a clip played backwards is the opposite direction, so only order tells;
- `digits`: scikit-learn's handwritten digit scans (real, shipped with the package), upsampled;
- `digit_sum`: "<image> plus <image> is 12" on two scans.

Splits: digits hold out a fixed seeded 30% of the scans ("eval"), so evaluation never shows a
training scan. Procedural tasks draw one distribution for both splits: keep the seeds disjoint.
Within an episode, demonstrations come from the same split as the query, and classification
tasks spread the demonstrations evenly over the classes (each class once before any twice), so
with at least as many shots as classes every class, the query's included, is demonstrated.

Text is word-level (single spaces, punctuation a word of its own); `VOCABULARY` holds every word
the templates can emit and `text_corpus` gives text-only lines for language-model pretraining.
In those lines every media marker is replaced by words that *describe* its content ("label :
circle dax . label : square wug . label : circle dax", "3 plus 4 is 7"), and the answers
follow from the text: a language model that has read them can map in context, compare and add
in words, as a pretrained LM brings what it read to Flamingo. What it cannot do is see: the
gated blocks must learn to make an image read, to the frozen LM, like its description.

Shape letters: N shots or images, F frames, C channels (3), H height, W width.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math

import numpy as np
import torch

from . import scenes
from .collate import Document, Sample
from .scene_tasks import MARKER, to_pixel_values

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

DIGITS_EVAL_FRACTION = 0.3
_DIGITS_SPLIT_SEED = 0  # fixed forever: changing it would leak eval scans into old checkpoints

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


def moving_clip(image: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Frames [F, C, H, W] of `image` [C, H, W], frame t rolled by shifts[t] = (rows, columns).

    The canvas wraps around (np.roll), so a shift never loses the shape.
    """
    _, H, W = image.shape
    rows = (np.arange(H)[None, :] - shifts[:, 0, None]) % H  # [F, H]
    cols = (np.arange(W)[None, :] - shifts[:, 1, None]) % W  # [F, W]
    return image[:, rows[:, :, None], cols[:, None, :]].transpose(1, 0, 2, 3)


class Video(ClassificationTask):
    """One shape moving `travel` pixels in one of 4 (or 8) directions over F frames.

    The path is centred on a point drawn uniformly within `jitter` pixels of the canvas centre,
    with the same random draws whatever the direction, so a clip played backwards is exactly
    the clip of the opposite direction: the unordered set of frames cannot tell a direction
    from its opposite (nor can anything blind to order do better than name the axis, 1/2 with
    4 directions). Frame t sits at fraction t/(F-1) of the path, so a clip of 30 frames is the
    same motion as one of 8, sampled more finely (the frame-interpolation experiment).

    `lead` is a training aid, 0 (the task proper) by default: each clip's path is pushed forward
    along its direction by a uniform fraction in [0, lead] of half its travel, so that where the
    shape is, on average, hints the direction. A model learns to read positions from those
    clips first; telling early frames from late ones then pays off by degrees. Trained on the
    order-only task alone, the demo-size model stayed at chance for 600 steps; with lead 1.0 it
    reads lead-0 clips at 0.96 after 3000 (docs/experiments.md).
    """

    name = "video"

    def __init__(self, *, frames: int = 8, directions: int = 4, travel: int = 12, jitter: int = 3,
                 lead: float = 0.0, image_size: int = 32, noise: float = 0.05):
        super().__init__(image_size=image_size, noise=noise)
        if directions not in (4, 8):
            raise ValueError(f"directions: expected 4 or 8, got {directions}")
        if frames < 2:
            raise ValueError(f"frames: expected at least 2 (the order is the signal), got {frames}")
        if not 2 <= travel <= image_size // 2:
            raise ValueError(f"travel: expected 2 to {image_size // 2} pixels (half the canvas), got {travel}")
        if not 0 <= jitter <= image_size // 4:
            raise ValueError(f"jitter: expected 0 to {image_size // 4} pixels, got {jitter}")
        if not 0.0 <= lead <= 1.0:
            raise ValueError(f"lead: expected a fraction in [0, 1], got {lead}")
        self.frames, self.travel, self.jitter, self.lead = frames, travel, jitter, float(lead)
        self.classes = tuple(DIRECTIONS)[:directions]
        self.answers = self.classes
        self.prompt = f"direction : {MARKER}"

    def __repr__(self) -> str:
        return (f"Video(frames={self.frames}, directions={len(self.classes)}, travel={self.travel}, "
                f"jitter={self.jitter}, lead={self.lead}, image_size={self.image_size})")

    def shifts(self, direction: str, centre: np.ndarray, lead: float = 0.0) -> np.ndarray:
        """Integer (rows, columns) shift [F, 2] of each frame from the canvas centre.

        Displacement along the path is travel * (2t - (F-1)) / (2(F-1)): exact in floating
        point up to the sign, and rounded half-to-even, so that reversing the frames of one
        direction gives exactly the opposite direction's shifts.
        """
        F = self.frames
        along = self.travel * (2 * np.arange(F) - (F - 1)) / (2 * (F - 1)) + lead * self.travel / 2  # [F]
        return centre[None, :] + np.round(along)[:, None].astype(np.int64) * np.array(DIRECTIONS[direction])

    def draw(self, rng, classes, split):
        size = self.image_size
        out = []
        for c in classes:
            # Every draw precedes and ignores the class: opposite directions share them.
            obj = self._one_object(rng, x=size / 2, y=size / 2)
            image = scenes.render((obj,), rng, image_size=size, noise=0.0)
            centre = rng.integers(-self.jitter, self.jitter + 1, size=2)
            lead = rng.uniform(0.0, self.lead)
            clip = moving_clip(image, self.shifts(self.classes[c], centre, lead))
            clip = clip + self.noise * rng.standard_normal(clip.shape, dtype=np.float32)  # float32: 2x faster
            out.append([to_pixel_values(np.clip(clip, 0.0, 1.0))])
        return out


# ---- digits: scikit-learn's handwritten digit scans ---------------------------------------


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def digit_images(image_size: int) -> torch.Tensor:
    """Every scan upsampled (bilinear) to [N, 1, H, W] in [-1, 1], ink bright on dark."""
    images, _ = _digits()
    x = torch.nn.functional.interpolate(torch.from_numpy(images)[:, None], size=(image_size, image_size),
                                        mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


@functools.lru_cache(maxsize=2)
def digit_split(split: str) -> np.ndarray:
    """Sorted indices of the scans in `split`: a fixed seeded permutation, 30% held out for eval."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    _, labels = _digits()
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(labels))
    n_eval = round(len(labels) * DIGITS_EVAL_FRACTION)
    out = np.sort(order[:n_eval] if split == "eval" else order[n_eval:])
    out.flags.writeable = False  # cached and shared
    return out


@functools.lru_cache(maxsize=2)
def _digit_pools(split: str) -> tuple[np.ndarray, ...]:
    _, labels = _digits()
    idx = digit_split(split)
    return tuple(idx[labels[idx] == d] for d in range(10))


def _digit_media(indices: np.ndarray, image_size: int) -> list[torch.Tensor]:
    """One RGB frame [1, 3, H, W] per scan index."""
    images = digit_images(image_size)[torch.from_numpy(np.asarray(indices))].expand(-1, 3, -1, -1)
    return [x[None].contiguous() for x in images]


class Digits(ClassificationTask):
    """The numeral of one handwritten digit scan."""

    name = "digits"
    classes = answers = DIGITS
    prompt = f"digit : {MARKER}"

    def draw(self, rng, classes, split):
        pools = _digit_pools(split)
        indices = np.empty(len(classes), dtype=np.int64)
        for c in np.unique(classes):
            where = np.flatnonzero(classes == c)
            # Distinct scans within an episode: the query is never a copy of a demonstration.
            indices[where] = rng.choice(pools[c], size=len(where), replace=False)
        return [[m] for m in _digit_media(indices, self.image_size)]


class DigitSum(Task):
    """Two digit scans and their sum: "<image> plus <image> is 12"."""

    name = "digit_sum"
    answers = SUMS
    prompt = f"{MARKER} plus {MARKER} is"

    def episode_shots(self, rng, shots, split):
        _, labels = _digits()
        indices = rng.choice(digit_split(split), size=2 * (shots + 1), replace=False).reshape(-1, 2)
        media = _digit_media(indices.reshape(-1), self.image_size)
        return [Shot(media[2 * i: 2 * i + 2], self.prompt, str(labels[a] + labels[b]))
                for i, (a, b) in enumerate(indices)]

    def text_shots(self, rng, count):
        return [(self.prompt.replace(MARKER, str(a), 1).replace(MARKER, str(b), 1), str(a + b))
                for a, b in rng.integers(10, size=(count, 2))]


# ---- registry -----------------------------------------------------------------------------

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (FewShotShapes, FewShotMapped, CrossImage, Video, Digits, DigitSum)
}


def get_task(name: str, **kwargs) -> Task:
    """The task registered as `name`, built with `kwargs` (e.g. image_size=32, frames=8)."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"name: unknown task {name!r}{hint} (known: {', '.join(TASKS)})")
    return TASKS[name](**kwargs)


def text_corpus(n: int, seed: int, max_shots: int = 4) -> list[str]:
    """`n` text-only episodes drawn evenly over the tasks, media described in words."""
    rng = np.random.default_rng(seed)
    tasks = [cls() for cls in TASKS.values()]
    return [tasks[int(rng.integers(len(tasks)))].text_line(rng, max_shots) for _ in range(n)]
