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
- `digit_sum`: "<image> plus <image> is 12" on two scans;
- `multilingual`: captions and questions in three invented languages and translation pairs
  between them (`data.languages`), in PaLI's prompt forms.

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

import difflib

import numpy as np

from .base import (
    DIGITS,
    DIRECTIONS,
    LABEL_WORDS,
    MAX_TRAINING_SHOTS,
    ORDINALS,
    SEPARATOR,
    SPLITS,
    SUMS,
    VOCABULARY,
    ClassificationTask,
    Shot,
    Task,
)
from .cross_image import CrossImage
from .digits import DIGITS_EVAL_FRACTION, Digits, DigitSum, digit_images, digit_split
from .fewshot import FewShotMapped, FewShotShapes
from .multilingual import Multilingual
from .video import Video, moving_clip

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (FewShotShapes, FewShotMapped, CrossImage, Video, Digits, DigitSum, Multilingual)
}


def get_task(name: str, **kwargs) -> Task:
    """The task registered as `name`, built with `kwargs` (e.g. image_size=32, frames=8)."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"name: unknown task {name!r}{hint} (known: {', '.join(TASKS)})")
    return TASKS[name](**kwargs)


def text_corpus(n: int, seed: int, max_shots: int = 4) -> list[str]:
    """`n` text-only episodes drawn evenly over the tasks, media described in words (the English
    tasks: `multilingual` has its own corpus)."""
    rng = np.random.default_rng(seed)
    tasks = [cls() for cls in TASKS.values() if cls is not Multilingual]
    return [tasks[int(rng.integers(len(tasks)))].text_line(rng, max_shots) for _ in range(n)]


__all__ = ["TASKS", "get_task", "text_corpus", "Task", "ClassificationTask", "Shot", "FewShotShapes", "FewShotMapped",
           "CrossImage", "Video", "Digits", "DigitSum", "Multilingual", "moving_clip", "digit_images", "digit_split", "SPLITS",
           "SEPARATOR", "MAX_TRAINING_SHOTS", "DIGITS_EVAL_FRACTION", "LABEL_WORDS", "ORDINALS", "DIRECTIONS",
           "DIGITS", "SUMS", "VOCABULARY"]
