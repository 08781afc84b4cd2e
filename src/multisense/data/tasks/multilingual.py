"""Captions, questions and translations in the three invented languages of `data.languages`,
as a task the trainer and `multisense eval` draw from (PaLI's prompts: "<image> caption aa",
"<image> answer bb <question>", "translate aa cc <sentence>").

(`data.languages` imports this package's base: its names are read when a task is built, not
at import.) Each shot is a fresh procedural scene with one caption or question in one language of `langs`,
its kind drawn from `kinds`; in training, with probability `translation`, a text-only
translation pair between `pivot` and another language instead (both directions), and with
probability `text_answers` a text-only question in another language than the pivot, answered
from a caption written before it ("answer bb <caption> <question>" -> the answer in bb). The
evaluation split draws neither. With one language and one question kind the answers
are a closed set (`answers`: that language's words for `scenes.ANSWER_SETS[kind]`), so
`multisense eval --task multilingual --task-arg "langs=[bb]" --task-arg "kinds=[colour]"` scores
accuracy against chance.

Shape letters: C channels (3), H height, W width.
"""

from __future__ import annotations

import numpy as np

from .. import languages as ml
from .. import scenes
from ..images import to_pixel_values
from .base import MARKER, Shot, Task


class Multilingual(Task):
    name = "multilingual"

    def __init__(self, *, langs=("aa",), kinds=None, translation: float = 0.0, text_answers: float = 0.0,
                 pivot: str = "aa", image_size: int = 32, noise: float = 0.05):
        super().__init__(image_size=image_size, noise=noise)
        if isinstance(langs, str):
            raise TypeError(f"langs: expected a list of language codes, got the string {langs!r}")
        self.langs = tuple(ml.check_lang(lang, "langs") for lang in langs)
        if not self.langs:
            raise ValueError(f"langs: expected at least one of {ml.LANGUAGES}")
        self.kinds = ml.check_kinds(ml.KINDS if kinds is None else kinds)  # default: captions and every question
        self.pivot = ml.check_lang(pivot, "pivot")
        if not 0.0 <= translation <= 1.0:
            raise ValueError(f"translation: expected a probability in [0, 1], got {translation!r}")
        self.translation = float(translation)
        if not 0.0 <= text_answers <= 1.0 - translation:
            raise ValueError(f"text_answers: expected a probability in [0, 1 - translation], got {text_answers!r}")
        self.text_answers = float(text_answers)
        self.pairs = ml.pivot_pairs(pivot)
        single = len(self.langs) == 1 and len(self.kinds) == 1 and self.kinds[0] in ml.QUESTION_KINDS
        self.answers = tuple(ml.ANSWER_SETS[self.langs[0]][self.kinds[0]]) if single else None

    def __repr__(self) -> str:
        return (f"Multilingual(langs={list(self.langs)}, kinds={list(self.kinds)}, translation={self.translation}, "
                f"pivot={self.pivot!r}, image_size={self.image_size})")

    def episode_shots(self, rng: np.random.Generator, shots: int, split: str) -> list[Shot]:
        return [self._shot(rng, split) for _ in range(shots + 1)]

    def _shot(self, rng: np.random.Generator, split: str) -> Shot:
        if split != "train":
            return self._image(rng)
        u = rng.random()
        if u < self.translation:
            return self._translation(rng)
        if u < self.translation + self.text_answers:
            return self._text_answer(rng)
        return self._image(rng)

    def _image(self, rng: np.random.Generator) -> Shot:
        lang = self.langs[int(rng.integers(len(self.langs)))]
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        # a position question needs two objects: such a scene is drawn for it
        scene = scenes.make_scene(rng, image_size=self.image_size, min_objects=2 if kind == "position" else 1,
                                  noise=self.noise)
        media = [to_pixel_values(scene.image[None])]  # one frame [1, C, H, W]
        if kind == "caption":
            return Shot(media, f"{MARKER} {ml.caption_prompt(lang)}", ml.render(ml.caption_meaning(scene.objects), lang))
        meaning = {m.kind: m for m in ml.question_meanings(scene.objects, rng)}[kind]
        prompt = f"{MARKER} {ml.answer_prompt(lang, ml.question_text(meaning, lang))}"
        return Shot(media, prompt, ml.answer_word(meaning.answer, lang))

    def _text_answer(self, rng: np.random.Generator) -> Shot:
        """A question in a language other than the pivot, answered from a caption written in the
        prompt: no image, so the language still never comes with one."""
        lang = [x for x in ml.LANGUAGES if x != self.pivot][int(rng.integers(len(ml.LANGUAGES) - 1))]
        kinds = [k for k in self.kinds if k in ml.QUESTION_KINDS] or list(ml.QUESTION_KINDS)
        kind = kinds[int(rng.integers(len(kinds)))]
        objects = scenes.sample_objects(rng, min_objects=2 if kind == "position" else 1)
        meaning = {m.kind: m for m in ml.question_meanings(objects, rng)}[kind]
        prompt = ml.answer_prompt(lang, f"{ml.render(ml.caption_meaning(objects), lang)} {ml.question_text(meaning, lang)}")
        return Shot([], prompt, ml.answer_word(meaning.answer, lang))

    def _translation(self, rng: np.random.Generator) -> Shot:
        src, tgt = self.pairs[int(rng.integers(len(self.pairs)))]
        meaning = ml.draw_sentence(rng, self.kinds, with_answers=True)
        return Shot([], ml.translate_prompt(src, tgt, ml.render(meaning, src)), ml.render(meaning, tgt))
