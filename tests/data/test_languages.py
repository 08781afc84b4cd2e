"""The procedural multilingual corpus: a stable lexicon, word forms shared only where intended,
word order as designed, faithful translations, per-language answer sets, deterministic splits,
and a tokenizer that reads every sentence."""

import itertools

import numpy as np
import pytest
import torch

from multisense.data import languages as ml
from multisense.data import scenes, tasks
from multisense.data.collate import Sample, collate

SPLIT_SIZES = dict(train_scenes=12, eval_scenes=8, translations=20)


@pytest.fixture(scope="module")
def splits():
    return ml.crosslingual_splits(5, **SPLIT_SIZES)


@pytest.fixture(scope="module")
def tokenizer():
    # A tiny corpus: coverage must come from the vocabulary, not from luck.
    return ml.train_tokenizer(ml.text_corpus(5, seed=0))


def _texts(samples):
    return [(s.prompt, s.target) for s in samples]


def _equal(a, b):
    return _texts(a) == _texts(b) and all(
        len(x.media) == len(y.media) and all(torch.equal(m, n) for m, n in zip(x.media, y.media)) for x, y in zip(a, b))


# ---- lexicon and word forms --------------------------------------------------------------


def test_lexicon_is_pinned_and_rebuilt_identically():
    # Pinned forms: the lexicon comes from SHA-256, so any machine and run gives these words.
    assert (ml.LEXICONS["aa"]["red"], ml.LEXICONS["bb"]["two"], ml.LEXICONS["cc"]["left_of"]) == ("talu", "zoze", "fusu")
    assert ml.make_lexicons() == ml.LEXICONS
    other = ml.make_lexicons("another seed")
    assert other != ml.LEXICONS
    assert all(set(other[lang]) == set(ml.CONCEPTS) for lang in ml.LANGUAGES)


def test_each_language_uses_its_own_sounds_and_every_concept_once():
    for lang in ml.LANGUAGES:
        lexicon, grammar = ml.LEXICONS[lang], ml.GRAMMARS[lang]
        assert tuple(lexicon) == ml.CONCEPTS
        assert len(set(lexicon.values())) == len(ml.CONCEPTS)  # one form per concept
        for word in lexicon.values():
            assert len(word) == 4
            assert word[0] in grammar.consonants and word[2] in grammar.consonants
            assert word[1] in grammar.vowels and word[3] in grammar.vowels


def test_languages_share_exactly_the_punctuation():
    reserved = {*scenes.VOCABULARY, *tasks.VOCABULARY, *ml.TASK_WORDS, *ml.LANGUAGES, "five"}
    for a, b in itertools.combinations(ml.LANGUAGES, 2):
        assert set(ml.WORDS[a]) & set(ml.WORDS[b]) == set(ml.PUNCTUATION)
        assert not set(ml.LEXICONS[a].values()) & set(ml.LEXICONS[b].values())
    for lang in ml.LANGUAGES:
        assert not set(ml.LEXICONS[lang].values()) & reserved
    # ... and in the sentences themselves: every caption and question each language can say
    used = {lang: {w for m in ml.all_meanings() for w in ml.render(m, lang).split()} for lang in ml.LANGUAGES}
    for a, b in itertools.combinations(ml.LANGUAGES, 2):
        assert used[a] & used[b] == set(ml.PUNCTUATION)
    assert set().union(*used.values()) | {*ml.TASK_WORDS, *ml.LANGUAGES} == set(ml.VOCABULARY)


def test_prompts_share_only_the_task_words_and_tags(splits):
    for name, samples in splits.items():
        for s in samples:
            own = set(ml.WORDS[s.lang])
            if s.kind == "translation":
                head = s.prompt.split()[:3]
                assert head == ["translate", s.source, s.lang] and set(s.target.split()) <= own
                assert set(s.prompt.split()[3:]) <= set(ml.WORDS[s.source])
            elif s.kind == "caption":
                assert s.prompt == f"caption {s.lang}" and set(s.target.split()) <= own
            else:
                words = s.prompt.split()
                assert words[:2] == ["answer", s.lang] and set(words[2:]) <= own and s.target in own


# ---- grammar ----------------------------------------------------------------------------


KNOWN = (scenes.SceneObject("red", "circle", 5, 9, 8), scenes.SceneObject("blue", "square", 20, 12, 8))


def test_word_order_as_designed():
    caption = ml.caption_meaning(KNOWN)
    position = ml.Meaning("position", (("red", "circle"), ("blue", "square")), "yes")
    glosses = {lang: (ml.gloss(ml.render(caption, lang), lang), ml.gloss(ml.render(position, lang), lang))
               for lang in ml.LANGUAGES}
    assert glosses["aa"] == (
        "the picture show a red circle and a blue square .".split(),
        "the red circle be left_of the blue square ? yes".split())
    assert glosses["bb"] == (
        "the picture a red circle and a blue square show .".split(),  # verb last: SOV
        "the red circle the blue square left_of be ? yes".split())  # postposition
    assert glosses["cc"] == (
        "show the picture a circle red and a square blue .".split(),  # verb first, adjective after
        "be the circle red left_of the square blue ? yes".split())
    for lang in ml.LANGUAGES:
        words, grammar = glosses[lang][0], ml.GRAMMARS[lang]
        verb = words.index("show")
        assert verb == {"SVO": 2, "SOV": len(words) - 2, "VSO": 0}[grammar.clause]
        red, circle = words.index("red"), words.index("circle")
        assert red - circle == (-1 if grammar.adjective == "before" else 1)


def test_every_meaning_has_one_sentence_and_parses_back():
    meanings = ml.all_meanings()
    assert len(meanings) == len(set(meanings))
    for lang in ml.LANGUAGES:
        texts = [ml.render(m, lang) for m in meanings]
        assert len(set(texts)) == len(texts)  # rendering is injective
        assert all(ml.parse(t, lang) == m for t, m in zip(texts[::37], meanings[::37]))


def test_meanings_follow_the_scene():
    rng = np.random.default_rng(0)
    for _ in range(40):
        objects = scenes.sample_objects(rng)
        assert ml.caption_meaning(objects).objects == tuple((o.colour, o.shape) for o in objects)
        for m in ml.question_meanings(objects, rng):
            if m.kind == "colour":
                assert m.answer == next(o.colour for o in objects if o.shape == m.objects[0][1])
            elif m.kind == "shape":
                assert m.answer == next(o.shape for o in objects if o.colour == m.objects[0][0])
            elif m.kind == "count":
                assert m.answer == scenes.NUMBER_WORDS[len(objects)]
            else:
                xs = {(o.colour, o.shape): o.x for o in objects}
                first, second = m.objects
                assert m.answer == ("yes" if xs[first] < xs[second] else "no")


# ---- translations -------------------------------------------------------------------------


def test_translation_pairs_carry_the_same_meaning(splits):
    pairs = splits["translation"]
    assert {(s.source, s.lang) for s in pairs} == {("aa", "bb"), ("bb", "aa"), ("aa", "cc"), ("cc", "aa")}
    assert len(pairs) == 4 * SPLIT_SIZES["translations"]
    for s in pairs:
        assert s.media == []
        source = s.prompt.split(maxsplit=3)[3]
        assert ml.parse(source, s.source) == ml.parse(s.target, s.lang) == s.meaning
        assert ml.translate(source, s.source, s.lang) == s.target
        assert ml.translate(s.target, s.lang, s.source) == source
        # word for word, the same concepts, only in each language's order
        assert sorted(ml.gloss(source, s.source)) == sorted(ml.gloss(s.target, s.lang))
    kinds = {s.meaning.kind for s in pairs}
    assert kinds == set(ml.KINDS)
    assert all(s.meaning.answer is not None for s in pairs if s.meaning.kind != "caption")


def test_translation_options():
    plain = ml.translation_samples(1, 10, pairs=[("bb", "cc")], kinds=("count", "position"), with_answers=False)
    assert len(plain) == 10 and {s.meaning.kind for s in plain} <= {"count", "position"}
    assert all(s.meaning.answer is None and s.target.endswith("?") for s in plain)


# ---- answers ----------------------------------------------------------------------------


def test_answer_sets_are_disjoint_complete_and_aligned():
    for lang in ml.LANGUAGES:
        sets = ml.ANSWER_SETS[lang]
        assert tuple(sets) == ml.QUESTION_KINDS
        for kind, words in sets.items():
            assert words == tuple(ml.answer_word(c, lang) for c in scenes.ANSWER_SETS[kind])
            assert tuple(ml.answer_concept(w, lang) for w in words) == scenes.ANSWER_SETS[kind]
            assert ml.chance(lang, kind) == pytest.approx(1 / len(scenes.ANSWER_SETS[kind]))
        every = [w for words in sets.values() for w in words]
        assert len(every) == len(set(every))  # no word answers two kinds
    for a, b in itertools.combinations(ml.LANGUAGES, 2):
        wa = {w for ws in ml.ANSWER_SETS[a].values() for w in ws}
        wb = {w for ws in ml.ANSWER_SETS[b].values() for w in ws}
        assert not wa & wb


def test_answers_are_in_the_language_of_the_question():
    samples = ml.image_samples(2, 150, kinds=ml.QUESTION_KINDS, split="eval")
    seen = {(lang, kind): set() for lang in ml.LANGUAGES for kind in ml.QUESTION_KINDS}
    for s in samples:
        assert s.target == ml.answer_word(s.meaning.answer, s.lang)
        assert s.target in ml.ANSWER_SETS[s.lang][s.kind]
        seen[s.lang, s.kind].add(s.target)
    # every answer of every language turns up: the sets are complete and none is dead
    assert all(seen[lang, kind] == set(ml.ANSWER_SETS[lang][kind]) for lang, kind in seen)


# ---- splits -----------------------------------------------------------------------------


def test_splits_are_deterministic_for_a_seed(splits):
    again = ml.crosslingual_splits(5, **SPLIT_SIZES)
    other = ml.crosslingual_splits(6, **SPLIT_SIZES)
    assert splits.keys() == again.keys() == {"pivot", "translation", "eval", "ceiling"}
    for name in splits:
        assert _equal(splits[name], again[name])
        assert _texts(splits[name]) != _texts(other[name])
    assert not torch.equal(splits["pivot"][0].media[0], other["pivot"][0].media[0])
    assert ml.text_corpus(30, seed=1) == ml.text_corpus(30, seed=1) != ml.text_corpus(30, seed=2)


def test_splits_hold_what_the_experiment_needs(splits):
    pivot, ceiling, evaluation = splits["pivot"], splits["ceiling"], splits["eval"]
    assert {s.lang for s in pivot} == {"aa"} and {s.kind for s in pivot} == set(ml.KINDS)
    assert sum(s.kind == "caption" for s in pivot) == SPLIT_SIZES["train_scenes"]
    # the ceiling: the same images and questions, in all three languages
    assert _equal([s for s in ceiling if s.lang == "aa"], pivot)
    assert {s.lang for s in ceiling} == set(ml.LANGUAGES) and len(ceiling) == 3 * len(pivot)
    by_lang = {lang: [s.meaning for s in ceiling if s.lang == lang] for lang in ml.LANGUAGES}
    assert by_lang["aa"] == by_lang["bb"] == by_lang["cc"]
    # evaluation: questions only, every language, about held-out images
    assert {s.kind for s in evaluation} == set(ml.QUESTION_KINDS) and {s.lang for s in evaluation} == set(ml.LANGUAGES)
    train_images = [s.media[0] for s in pivot if s.kind == "caption"]
    for s in evaluation:
        assert s.media[0].shape == (1, 3, 32, 32) and s.media[0].min() >= -1 and s.media[0].max() <= 1
        assert not any(torch.equal(s.media[0], image) for image in train_images)


def test_other_pivot_marker_and_image_size():
    out = ml.crosslingual_splits(0, train_scenes=2, eval_scenes=1, translations=3, pivot="bb", marker="<image>",
                                 image_size=48)
    assert {s.lang for s in out["pivot"]} == {"bb"}
    assert {(s.source, s.lang) for s in out["translation"]} == {("bb", "aa"), ("aa", "bb"), ("bb", "cc"), ("cc", "bb")}
    for name in ("pivot", "eval", "ceiling"):
        assert all(s.prompt.startswith("<image> ") and s.media[0].shape == (1, 3, 48, 48) for s in out[name])
    assert not any("<image>" in s.prompt for s in out["translation"])


def test_samples_collate(tokenizer, splits):
    samples = splits["pivot"][:3] + splits["translation"][:2]
    assert all(isinstance(s, Sample) for s in samples)
    batch = collate(samples, tokenizer)
    assert batch["pixel_values"].shape[:3] == (5, 1, 1)
    assert batch["frame_mask"][:, 0, 0].tolist() == [True, True, True, False, False]
    assert "pixel_values" not in collate(splits["translation"][:2], tokenizer)


# ---- tokenizer --------------------------------------------------------------------------


def test_tokenizer_reads_every_sentence(tokenizer, splits):
    vocab = tokenizer.get_vocab()
    assert set(ml.VOCABULARY) <= set(vocab)
    assert {*ml.TASK_WORDS, *ml.LANGUAGES} <= set(vocab)
    assert not set(scenes.VOCABULARY) - set(ml.VOCABULARY) & set(vocab)  # no English beyond the task words
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "<eos>", "<unk>")
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}) == 3
    lines = [ml.render(m, lang) for m in ml.all_meanings() for lang in ml.LANGUAGES]
    lines += [text for samples in splits.values() for s in samples for text in (s.prompt, s.target)]
    for line in lines:
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and len(ids) == len(line.split())
    assert tokenizer.decode(tokenizer(lines[0])["input_ids"]) == lines[0]


def test_default_tokenizer_is_the_same_every_time():
    assert ml.train_tokenizer().get_vocab() == ml.train_tokenizer().get_vocab()


# ---- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: ml.image_samples(0, 2, langs=("aa", "en")), "langs"),
    (lambda: ml.image_samples(0, 2, langs="aa"), "langs"),
    (lambda: ml.image_samples(0, 2, kinds=("colour", "size")), "kinds"),
    (lambda: ml.image_samples(0, 2, split="test"), "split"),
    (lambda: ml.image_samples(0, -1), "n_scenes"),
    (lambda: ml.image_samples(-3, 2), "seed"),
    (lambda: ml.image_samples(0, 2, image_size=0), "image_size"),
    (lambda: ml.answer_concept("zoze", "aa"), "word"),
    (lambda: ml.translation_samples(0, 2, pairs=[("aa", "aa")]), "pairs"),
    (lambda: ml.translation_samples(0, 2, pairs=[("aa", "xx")]), "pairs"),
    (lambda: ml.translation_samples(0, 2.5), "n"),
    (lambda: ml.crosslingual_splits(0, pivot="en"), "pivot"),
    (lambda: ml.chance("aa", "caption"), "kind"),
    (lambda: ml.answer_word("pink", "aa"), "concept"),
    (lambda: ml.parse("talu talu", "aa"), "text"),
    (lambda: ml.gloss("talu zoze", "aa"), "text"),
    (lambda: ml.translate("talu", "aa", "dd"), "tgt"),
])
def test_errors_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ---- the task the trainer and `multisense eval` draw from ----------------------------------


def test_the_multilingual_task_draws_pali_prompts_in_its_languages_and_translations_in_training_only():
    from multisense.data.tasks import get_task
    from multisense.tokens import MEDIA_MARKER as MARKER

    task = get_task("multilingual", langs=["aa"], translation=0.5)
    assert task.answers is None  # several kinds: open answers
    docs = [task.training_document(np.random.default_rng(i), max_shots=0) for i in range(60)]
    translations = [d for d in docs if not d.media]
    assert 15 < len(translations) < 45
    for d in translations:
        words = d.text.split()
        assert words[0] == "translate" and (words[1], words[2]) in ml.pivot_pairs("aa")
    for d in docs:
        if d.media:
            assert d.text.startswith(f"{MARKER} caption aa ") or d.text.startswith(f"{MARKER} answer aa ")
            assert d.media[0].shape == (1, 3, 32, 32)
        assert set(d.text.split()) - {MARKER} <= set(ml.VOCABULARY)
    again = [task.training_document(np.random.default_rng(i), max_shots=0) for i in range(60)]
    assert [d.text for d in again] == [d.text for d in docs]  # deterministic for a seed
    evaluation = get_task("multilingual", langs=["cc"], kinds=["count"], translation=1.0)
    assert evaluation.answers == ml.ANSWER_SETS["cc"]["count"]
    for i in range(10):  # the evaluation split never translates, and the answer is a word of cc
        s = evaluation.episode(np.random.default_rng(i), 0, "eval")
        assert s.prompt.startswith(f"{MARKER} answer cc ") and s.target in evaluation.answers and s.media
    with pytest.raises(ValueError, match="translation"):
        get_task("multilingual", translation=2)
    with pytest.raises(ValueError, match="langs"):
        get_task("multilingual", langs=["en"])
