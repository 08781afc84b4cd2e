"""A procedural multilingual corpus over the demo's scenes: three invented languages, for PaLI.

PaLI (Chen et al. 2022, "PaLI: A Jointly-Scaled Multilingual Language-Image Model") trains one
encoder-decoder on images and text in many languages at once, with task prompts such as
`caption <lang>` and `answer <lang> <question>`. Its claim tested here is zero-shot cross-lingual
transfer: a model trained on image captions and questions in one language, plus text-only
translation pairs, answers questions about images asked in another language that it never saw
paired with an image. To measure that without downloading anything, this module generates
three small languages over the procedural scenes of `data.scenes` (the same images, objects
and question draws the Flamingo demo uses; nothing of `scenes` is duplicated here):

- `aa`: subject-verb-object, adjectives before nouns, "left_of" a preposition (English-like):
  "the picture show a red circle ." (glossed word by word);
- `bb`: subject-object-verb, adjectives before nouns, "left_of" a postposition:
  "the picture a red circle show .";
- `cc`: verb-subject-object, adjectives after nouns, "left_of" a preposition:
  "show the picture a circle red .".

Every sentence is the rendering of a `Meaning` (a caption's objects left to right, or a question
and optionally its answer) by one language's grammar and lexicon; one concept is one word in
every language, and `parse` maps a sentence back to its meaning (rendering is injective), so
`translate` is `render(parse(text, src), tgt)`. Sentences (glossed in `aa`'s order):

- caption: "the picture show a red circle , a blue square and a green triangle ."
- colour: "the circle have what colour ?"      answer: a colour
- shape: "the red thing have what shape ?"     answer: a shape
- count: "the picture show how_many shape ?"   answer: one, two or three
- position: "the red circle be left_of the blue square ?"   answer: yes or no

Word forms. Each language has its own invented words, two consonant-vowel syllables from its
own sound inventory, picked by SHA-256 of (`LEXICON_SEED`, language, concept), so the lexicon is
the same on every run and machine and independent of numpy's generators. The only word forms
the three languages share are the punctuation marks `PUNCTUATION` (",", ".", "?"); no invented
word is a word of the English scenes or tasks vocabulary, an English number word, a task word or
a language tag. Numbers are words of each language, not shared digits. Prompts are written in a fourth, shared set of words, as in
PaLI: the task words `TASK_WORDS` ("caption", "answer", "translate") and the language tags
`LANGUAGES` ("aa", "bb", "cc"):

- `caption aa` -> the caption in aa;
- `answer bb <question in bb>` -> the answer word in bb (`ANSWER_SETS["bb"][kind]`, one word per
  concept of `scenes.ANSWER_SETS[kind]`, in the same order, so chance is 1 / its length);
- `translate aa cc <sentence in aa>` -> the sentence in cc (text only).

Splits for the cross-lingual experiment (`crosslingual_splits`), deterministic for a seed:
(a) `pivot`: images with captions and questions in the pivot language only; (b) `translation`:
text-only translation pairs pivot <-> each other language; (c) `eval`: questions in every
language about held-out images (the other languages' questions never came with an image in
training; the pivot's are the in-language reference); (d) `ceiling`: the images of (a) with
captions and questions in all three languages. Samples are `MultilingualSample`s, a
`collate.Sample` (prompt, target, media) that also carries its language, kind and meaning, so
`collate.collate` batches them unchanged. Prompts carry no `<image>` marker by default (PaLI
puts the image's tokens before the prompt); `marker="<image>"` prefixes one for the Flamingo and
LLaVA families.

Shape letters: C channels (3), H height, W width.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from . import scenes
from .collate import Sample
from .images import to_pixel_values
from .tasks.base import VOCABULARY as TASKS_VOCABULARY
from .tokenizer import train_word_tokenizer

LANGUAGES = ("aa", "bb", "cc")
TASK_WORDS = ("caption", "answer", "translate")
PUNCTUATION = (",", ".", "?")
# Kinds of sentence: a caption, or a question of one of the kinds of scenes.ANSWER_SETS.
QUESTION_KINDS = tuple(scenes.ANSWER_SETS)  # colour, shape, count, position
KINDS = ("caption", *QUESTION_KINDS)
# Seed of the lexicon's word forms (not of the scenes): change it and every word changes.
LEXICON_SEED = "multisense-multilingual-1"


@dataclass(frozen=True)
class Grammar:
    """Word order of one language: `clause` orders subject (S), verb (V) and object (O);
    `adjective` is "before" or "after" the noun; `adposition` puts "left_of" "before" or "after"
    its noun phrase. A determiner always opens its noun phrase."""

    clause: str
    adjective: str
    adposition: str
    consonants: str  # the sound inventory of its words
    vowels: str


GRAMMARS: dict[str, Grammar] = {
    "aa": Grammar(clause="SVO", adjective="before", adposition="before", consonants="ptkmnl", vowels="aiu"),
    "bb": Grammar(clause="SOV", adjective="before", adposition="after", consonants="bdgrz", vowels="aeo"),
    "cc": Grammar(clause="VSO", adjective="after", adposition="before", consonants="fhsvwy", vowels="eiu"),
}

# Concepts: the English scenes words name them (colours, shapes, numbers, yes/no), the
# function concepts are named in English glosses. Each is one word in every language.
FUNCTION_CONCEPTS = ("the", "a", "and", "picture", "show", "have", "be", "what", "colour", "shape",
                     "thing", "how_many", "left_of")
ANSWER_CONCEPTS = tuple(dict.fromkeys(word for kind in QUESTION_KINDS for word in scenes.ANSWER_SETS[kind]))
CONCEPTS = (*FUNCTION_CONCEPTS, *ANSWER_CONCEPTS)
# No invented word may be one of these (English number words too: "five" must not mean a triangle).
_RESERVED = frozenset((*scenes.VOCABULARY, *TASKS_VOCABULARY, *TASK_WORDS, *LANGUAGES, *PUNCTUATION,
                       "four", "five", "six", "seven", "eight", "nine", "ten"))
_SYLLABLES = 2


def make_lexicons(seed: str = LEXICON_SEED) -> dict[str, dict[str, str]]:
    """{language: {concept: word}}: each word two syllables of its language's inventory, drawn
    from SHA-256 of (seed, language, concept, attempt); a form already taken (by any language)
    or reserved is redrawn with the next attempt, so no two concepts anywhere share a form."""
    if not isinstance(seed, str):
        raise TypeError(f"seed: expected a str, got {type(seed).__name__}")
    taken: set[str] = set(_RESERVED)
    out: dict[str, dict[str, str]] = {}
    for lang in LANGUAGES:
        grammar, lexicon = GRAMMARS[lang], {}
        for concept in CONCEPTS:
            for attempt in itertools.count():
                digest = hashlib.sha256(f"{seed}|{lang}|{concept}|{attempt}".encode()).digest()
                word = "".join(grammar.consonants[digest[2 * i] % len(grammar.consonants)]
                               + grammar.vowels[digest[2 * i + 1] % len(grammar.vowels)] for i in range(_SYLLABLES))
                if word not in taken:
                    break
            taken.add(word)
            lexicon[concept] = word
        out[lang] = lexicon
    return out


LEXICONS: dict[str, dict[str, str]] = make_lexicons()
# Answer words per language and question kind, in the order of scenes.ANSWER_SETS[kind].
ANSWER_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    lang: {kind: tuple(LEXICONS[lang][c] for c in scenes.ANSWER_SETS[kind]) for kind in QUESTION_KINDS}
    for lang in LANGUAGES
}
# Every word of each language (its lexicon and punctuation), and every word the corpus emits.
WORDS: dict[str, tuple[str, ...]] = {lang: (*LEXICONS[lang].values(), *PUNCTUATION) for lang in LANGUAGES}
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys([*TASK_WORDS, *LANGUAGES, *PUNCTUATION,
                                                   *(w for lang in LANGUAGES for w in LEXICONS[lang].values())]))


def check_lang(lang: str, name: str = "lang") -> str:
    if lang not in GRAMMARS:
        raise ValueError(f"{name}: unknown language {lang!r} (known: {', '.join(LANGUAGES)})")
    return lang


def check_kinds(kinds: Sequence[str], allowed: Sequence[str] = KINDS, name: str = "kinds") -> tuple[str, ...]:
    if isinstance(kinds, str):
        raise TypeError(f"{name}: expected a sequence of kinds, got the string {kinds!r}")
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in allowed]
    if bad or not kinds:
        raise ValueError(f"{name}: expected a non-empty subset of {allowed}, got {kinds!r}")
    return kinds


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    return int(value)


def answer_word(concept: str, lang: str) -> str:
    """`lang`'s word for an answer concept ("red", "two", "yes", ... as in scenes.ANSWER_SETS)."""
    check_lang(lang)
    if concept not in ANSWER_CONCEPTS:
        raise ValueError(f"concept: {concept!r} is no answer (answers: {', '.join(ANSWER_CONCEPTS)})")
    return LEXICONS[lang][concept]


def answer_concept(word: str, lang: str) -> str:
    """The answer concept of `lang`'s answer word `word` (the inverse of `answer_word`), for scoring
    across languages; a word that is no answer of `lang` is an error."""
    check_lang(lang)
    for concept in ANSWER_CONCEPTS:
        if LEXICONS[lang][concept] == word:
            return concept
    raise ValueError(f"word: {word!r} is no answer word of {lang!r}")


def chance(lang: str, kind: str) -> float:
    """Accuracy of a uniform guess among the answers of `kind` in `lang`."""
    check_lang(lang)
    check_kinds((kind,), QUESTION_KINDS, name="kind")
    return 1.0 / len(ANSWER_SETS[lang][kind])


def gloss(text: str, lang: str) -> list[str]:
    """The concept of each word of `text` in `lang` (punctuation stays itself)."""
    check_lang(lang)
    inverse = {w: c for c, w in LEXICONS[lang].items()} | {p: p for p in PUNCTUATION}
    words = text.split()
    unknown = [w for w in words if w not in inverse]
    if unknown:
        raise ValueError(f"text: words {unknown} are not words of {lang!r}")
    return [inverse[w] for w in words]


# ---- meanings and their rendering --------------------------------------------------------


class Meaning(NamedTuple):
    """What a sentence says, language-free. `objects` are (colour, shape) pairs: a caption's
    objects left to right; a colour question's ((None, shape),); a shape question's
    ((colour, None),); none for count; a position question's (first, second), asking whether
    first is left of second. `answer`: the answer concept, for a question line with its answer."""

    kind: str
    objects: tuple[tuple[str | None, str | None], ...] = ()
    answer: str | None = None


def caption_meaning(objects: Sequence[scenes.SceneObject]) -> Meaning:
    return Meaning("caption", tuple((o.colour, o.shape) for o in objects))


def qa_meaning(qa: scenes.QA) -> Meaning:
    """The meaning of one of `scenes.questions_about`'s questions, answer included."""
    words = qa.question.split()
    if qa.kind == "colour":
        return Meaning("colour", ((None, qa.subject),), qa.answer)
    if qa.kind == "shape":
        return Meaning("shape", ((qa.subject, None),), qa.answer)
    if qa.kind == "count":
        return Meaning("count", (), qa.answer)
    if qa.kind == "position" and len(words) == 10 and words[4:6] == ["left", "of"]:
        return Meaning("position", ((words[2], words[3]), (words[7], words[8])), qa.answer)
    raise ValueError(f"qa: cannot read the meaning of {qa!r}")


def question_meanings(objects: Sequence[scenes.SceneObject], rng: np.random.Generator) -> list[Meaning]:
    """One question per kind (with its answer) about `objects`, drawn as `scenes.questions_about` draws them."""
    return [qa_meaning(qa) for qa in scenes.questions_about(tuple(objects), rng)]


def _noun_phrase(lex: dict[str, str], g: Grammar, det: str, colour: str | None, noun: str) -> list[str]:
    adjective = [lex[colour]] if colour else []
    rest = [*adjective, lex[noun]] if g.adjective == "before" else [lex[noun], *adjective]
    return [lex[det], *rest]


def _clause(lex: dict[str, str], g: Grammar, subject: list[str], verb: str, obj: list[str]) -> list[str]:
    parts = {"S": subject, "V": [lex[verb]], "O": obj}
    return [w for role in g.clause for w in parts[role]]


def render(meaning: Meaning, lang: str) -> str:
    """`meaning` as a sentence of `lang`: words joined by single spaces, punctuation its own word."""
    check_lang(lang)
    lex, g = LEXICONS[lang], GRAMMARS[lang]
    kind, objects = meaning.kind, meaning.objects
    picture = _noun_phrase(lex, g, "the", None, "picture")
    if kind == "caption":
        if not 1 <= len(objects) <= scenes.MAX_OBJECTS:
            raise ValueError(f"meaning: a caption names 1 to {scenes.MAX_OBJECTS} objects, got {len(objects)}")
        phrases = [_noun_phrase(lex, g, "a", c, s) for c, s in objects]
        listed = [w for p in phrases[:-1] for w in (*p, ",")][:-1]
        listed = [*listed, lex["and"], *phrases[-1]] if len(phrases) > 1 else phrases[0]
        words = [*_clause(lex, g, picture, "show", listed), "."]
    elif kind == "colour":
        subject = _noun_phrase(lex, g, "the", None, objects[0][1])
        words = _clause(lex, g, subject, "have", [lex["what"], lex["colour"]])
    elif kind == "shape":
        subject = _noun_phrase(lex, g, "the", objects[0][0], "thing")
        words = _clause(lex, g, subject, "have", [lex["what"], lex["shape"]])
    elif kind == "count":
        words = _clause(lex, g, picture, "show", [lex["how_many"], lex["shape"]])
    elif kind == "position":
        (c1, s1), (c2, s2) = objects
        ground = _noun_phrase(lex, g, "the", c2, s2)
        relation = [lex["left_of"], *ground] if g.adposition == "before" else [*ground, lex["left_of"]]
        words = _clause(lex, g, _noun_phrase(lex, g, "the", c1, s1), "be", relation)
    else:
        raise ValueError(f"meaning: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if kind != "caption":
        words.append("?")
        if meaning.answer is not None:
            words.append(answer_word(meaning.answer, lang))
    return " ".join(words)


def question_text(meaning: Meaning, lang: str) -> str:
    """The question of `meaning` in `lang`, without its answer."""
    return render(meaning._replace(answer=None), lang)


def all_meanings() -> list[Meaning]:
    """Every meaning the corpus can express: every caption, question and question with answer."""
    colours, shapes = tuple(scenes.COLOURS), scenes.SHAPES
    out = []
    for n in range(1, scenes.MAX_OBJECTS + 1):
        for cs in itertools.permutations(colours, n):
            for ss in itertools.permutations(shapes, n):
                out.append(Meaning("caption", tuple(zip(cs, ss))))
    questions = [Meaning("colour", ((None, s),)) for s in shapes]
    questions += [Meaning("shape", ((c, None),)) for c in colours]
    questions += [Meaning("count")]
    questions += [Meaning("position", ((c1, s1), (c2, s2)))
                  for c1, c2 in itertools.permutations(colours, 2) for s1, s2 in itertools.permutations(shapes, 2)]
    for q in questions:
        out += [q, *(q._replace(answer=a) for a in scenes.ANSWER_SETS[q.kind])]
    return out


@lru_cache(maxsize=None)
def _parse_table(lang: str) -> dict[str, Meaning]:
    table: dict[str, Meaning] = {}
    for meaning in all_meanings():
        text = render(meaning, lang)
        if text in table:  # the grammar would be ambiguous
            raise RuntimeError(f"{lang}: {table[text]} and {meaning} both read {text!r}")
        table[text] = meaning
    return table


def parse(text: str, lang: str) -> Meaning:
    """The meaning of a sentence of `lang` (the inverse of `render`)."""
    check_lang(lang)
    meaning = _parse_table(lang).get(text)
    if meaning is None:
        raise ValueError(f"text: {text!r} is no sentence of {lang!r}")
    return meaning


def translate(text: str, src: str, tgt: str) -> str:
    """`text` of language `src` rendered in `tgt` (the reference translation)."""
    check_lang(src, "src")
    check_lang(tgt, "tgt")
    return render(parse(text, src), tgt)


# ---- prompts (PaLI's task forms) ---------------------------------------------------------


def caption_prompt(lang: str) -> str:
    return f"caption {check_lang(lang)}"


def answer_prompt(lang: str, question: str) -> str:
    return f"answer {check_lang(lang)} {question}"


def translate_prompt(src: str, tgt: str, text: str) -> str:
    return f"translate {check_lang(src, 'src')} {check_lang(tgt, 'tgt')} {text}"


# ---- samples and splits ------------------------------------------------------------------


@dataclass
class MultilingualSample(Sample):
    """A `collate.Sample` (prompt, target, media: an image is one frame [1, C, H, W] in [-1, 1];
    a translation has none) with what an evaluator needs: `lang` (the language of the target),
    `kind` (caption, a question kind, or "translation"), `source` (a translation's source
    language, else None) and `meaning` (of the caption, question or translated sentence;
    a question's `meaning.answer` is its answer concept)."""

    lang: str = ""
    kind: str = ""
    source: str | None = None
    meaning: Meaning = field(default_factory=lambda: Meaning("caption"))


SPLITS = ("train", "eval")
# Independent numpy streams per use, so that (a), (c) and (b) never share a scene.
_STREAMS = {"train": 0, "eval": 1, "translation": 2, "text": 3}


def _rng(seed: int, stream: str) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    return np.random.default_rng([int(seed), _STREAMS[stream]])


def _prefixed(prompt: str, marker: str | None) -> str:
    return prompt if marker is None else f"{marker} {prompt}"


def image_samples(seed: int, n_scenes: int, *, langs: Sequence[str] = LANGUAGES, kinds: Sequence[str] = KINDS,
                  split: str = "train", image_size: int = 32, marker: str | None = None) -> list[MultilingualSample]:
    """Images with captions and questions: `n_scenes` scenes of the `split` stream of `seed`
    ("eval" scenes are held out: a stream independent of "train"'s), each giving one sample per
    language of `langs` and kind of `kinds` (a position question only where the scene has two
    objects or more). The scenes and their questions depend on (seed, split, n_scenes,
    image_size) only, so two calls with other `langs` or `kinds` describe the same images with
    the same questions. Order: scene by scene, then language, then kind."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    n_scenes = _check_count(n_scenes, "n_scenes")
    if isinstance(langs, str):
        raise TypeError(f"langs: expected a sequence of language codes, got the string {langs!r}")
    langs = tuple(check_lang(lang, "langs") for lang in langs)
    if not langs:
        raise ValueError("langs: expected at least one language")
    kinds = check_kinds(kinds)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size: expected an int >= 8, got {image_size!r}")
    if marker is not None and not isinstance(marker, str):
        raise TypeError(f"marker: expected a str or None, got {type(marker).__name__}")
    rng = _rng(seed, split)
    out: list[MultilingualSample] = []
    for _ in range(n_scenes):
        scene = scenes.make_scene(rng, image_size=image_size)
        meanings = {m.kind: m for m in question_meanings(scene.objects, rng)}
        meanings["caption"] = caption_meaning(scene.objects)
        media = [to_pixel_values(scene.image[None])]  # one frame [1, C, H, W], shared by the scene's samples
        for lang in langs:
            for kind in kinds:
                meaning = meanings.get(kind)
                if meaning is None:
                    continue
                if kind == "caption":
                    prompt, target = caption_prompt(lang), render(meaning, lang)
                else:
                    prompt = answer_prompt(lang, question_text(meaning, lang))
                    target = answer_word(meaning.answer, lang)
                out.append(MultilingualSample(_prefixed(prompt, marker), target, list(media), lang=lang, kind=kind,
                                              meaning=meaning))
    return out


def draw_sentence(rng: np.random.Generator, kinds: tuple[str, ...], with_answers: bool) -> Meaning:
    kind = kinds[int(rng.integers(len(kinds)))]
    objects = scenes.sample_objects(rng, min_objects=2 if kind == "position" else 1)
    if kind == "caption":
        return caption_meaning(objects)
    meaning = {m.kind: m for m in question_meanings(objects, rng)}[kind]
    return meaning if with_answers else meaning._replace(answer=None)


def pivot_pairs(pivot: str = "aa") -> tuple[tuple[str, str], ...]:
    """Both directions between `pivot` and each other language: ((aa, bb), (bb, aa), (aa, cc), (cc, aa))."""
    check_lang(pivot, "pivot")
    return tuple(pair for other in LANGUAGES if other != pivot for pair in ((pivot, other), (other, pivot)))


def translation_samples(seed: int, n: int, *, pairs: Iterable[tuple[str, str]] = pivot_pairs(),
                        kinds: Sequence[str] = KINDS, with_answers: bool = True) -> list[MultilingualSample]:
    """Text-only translation pairs: `n` sentences about unrendered scenes (the "translation"
    stream of `seed`, so no image of any split), each kind drawn uniformly from `kinds`, each
    sentence giving one sample per (src, tgt) of `pairs`: prompt `translate src tgt <sentence>`,
    target the sentence in tgt. `with_answers`: a question is followed by its answer word
    ("... ? <answer>"), so that the answers' words are translated too (count and yes/no words
    appear in no caption)."""
    n = _check_count(n, "n")
    pairs = tuple(tuple(p) for p in pairs)
    for p in pairs:
        if len(p) != 2:
            raise ValueError(f"pairs: expected (src, tgt) pairs, got {p!r}")
        check_lang(p[0], "pairs")
        check_lang(p[1], "pairs")
        if p[0] == p[1]:
            raise ValueError(f"pairs: {p!r} translates a language into itself")
    if not pairs:
        raise ValueError("pairs: expected at least one (src, tgt) pair")
    kinds = check_kinds(kinds)
    rng = _rng(seed, "translation")
    out = []
    for _ in range(n):
        meaning = draw_sentence(rng, kinds, with_answers)
        for src, tgt in pairs:
            out.append(MultilingualSample(translate_prompt(src, tgt, render(meaning, src)), render(meaning, tgt),
                                          lang=tgt, kind="translation", source=src, meaning=meaning))
    return out


def crosslingual_splits(seed: int, *, train_scenes: int = 200, eval_scenes: int = 100, translations: int = 400,
                        pivot: str = "aa", image_size: int = 32, marker: str | None = None,
                        ) -> dict[str, list[MultilingualSample]]:
    """The four splits of the zero-shot cross-lingual experiment, deterministic for `seed`:

    - "pivot": `image_samples` of `train_scenes` training scenes, captions and questions in `pivot` only;
    - "translation": `translation_samples` of `translations` sentences, `pivot` <-> each other language;
    - "eval": questions (no captions) in every language about `eval_scenes` held-out scenes;
      filter by `sample.lang` for the unseen languages, the pivot's being the in-language reference;
    - "ceiling": the scenes of "pivot" with captions and questions in all three languages.
    """
    check_lang(pivot, "pivot")
    train = dict(seed=seed, n_scenes=train_scenes, split="train", image_size=image_size, marker=marker)
    return {
        "pivot": image_samples(**train, langs=(pivot,)),
        "translation": translation_samples(seed, translations, pairs=pivot_pairs(pivot)),
        "eval": image_samples(seed, eval_scenes, kinds=QUESTION_KINDS, split="eval", image_size=image_size,
                              marker=marker),
        "ceiling": image_samples(**train, langs=LANGUAGES),
    }


# ---- text corpus and tokenizer -----------------------------------------------------------


def text_corpus(n: int, seed: int, *, langs: Sequence[str] = LANGUAGES) -> list[str]:
    """`n` text-only lines for language-model pretraining, each a caption or a question with its
    answer (kind uniform) of an unrendered scene, in a language drawn uniformly from `langs`."""
    n = _check_count(n, "n")
    if isinstance(langs, str):
        raise TypeError(f"langs: expected a sequence of language codes, got the string {langs!r}")
    langs = tuple(check_lang(lang, "langs") for lang in langs)
    if not langs:
        raise ValueError("langs: expected at least one language")
    rng = _rng(seed, "text")
    lines = []
    for _ in range(n):
        meaning = draw_sentence(rng, KINDS, with_answers=True)
        lines.append(render(meaning, langs[int(rng.integers(len(langs)))]))
    return lines


def train_tokenizer(corpus: Iterable[str] | None = None):
    """A word-level `PreTrainedTokenizerFast` (pad, eos, unk; `tokenizer.train_word_tokenizer`)
    over the three languages, the task words and the language tags: every word of `VOCABULARY`
    is in it whatever `corpus` (default: 2000 lines of `text_corpus`, seed 0) orders by frequency."""
    lines = text_corpus(2000, seed=0) if corpus is None else list(corpus)
    return train_word_tokenizer(lines, vocabulary=VOCABULARY)


__all__ = ["LANGUAGES", "TASK_WORDS", "PUNCTUATION", "KINDS", "QUESTION_KINDS", "LEXICON_SEED", "Grammar", "GRAMMARS",
           "CONCEPTS", "FUNCTION_CONCEPTS", "ANSWER_CONCEPTS", "LEXICONS", "ANSWER_SETS", "WORDS", "VOCABULARY",
           "SPLITS", "Meaning", "MultilingualSample", "make_lexicons", "answer_word", "answer_concept",
           "chance", "gloss", "check_lang", "check_kinds", "draw_sentence", "caption_meaning", "qa_meaning", "question_meanings", "render", "question_text", "all_meanings", "parse",
           "translate", "caption_prompt", "answer_prompt", "translate_prompt", "image_samples", "pivot_pairs",
           "translation_samples", "crosslingual_splits", "text_corpus", "train_tokenizer"]
