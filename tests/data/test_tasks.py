"""Few-shot tasks: shapes and markers, determinism, held-out digits, in-context labels, video order."""

import functools
import re
import time

import numpy as np
import pytest
import torch

from multisense.data import scenes, tasks
from multisense.data.collate import Document, Sample
from multisense.data.tasks.captions import MARKER

ENGLISH = [name for name in tasks.TASKS if name != "multilingual"]  # multilingual: tests/data/test_multilingual.py
VARIANTS = [
    *((name, {}) for name in ENGLISH),
    ("fewshot_shapes", {"attribute": "colour"}),
    ("cross_image", {"images": 4}),
    ("video", {"directions": 8, "frames": 5}),
    ("digits", {"image_size": 48}),
]


def rng(seed=0):
    return np.random.default_rng(seed)


def colour_of(image: torch.Tensor) -> str:
    """The one object colour in a noiseless frame [1, C, H, W] (the background is grey)."""
    pixels = (image[0] * 0.5 + 0.5).reshape(3, -1).T
    found = {name for name, rgb in scenes.COLOURS.items()
             if torch.isclose(pixels, torch.tensor(rgb), atol=1e-5).all(1).any()}
    assert len(found) == 1, found
    return found.pop()


@pytest.mark.parametrize("name, kwargs", VARIANTS)
@pytest.mark.parametrize("shots", [0, 2, 8])
def test_episode_has_one_marker_per_media_item_and_media_shapes(name, kwargs, shots):
    task = tasks.get_task(name, **kwargs)
    sample = task.episode(rng(shots), shots, "eval")
    assert isinstance(sample, Sample)
    per_shot = sample.prompt.split(tasks.SEPARATOR)
    assert len(per_shot) == shots + 1
    assert sample.prompt.count(MARKER) == len(sample.media) == per_shot[-1].count(MARKER) * (shots + 1)
    assert sample.target and sample.target == sample.target.strip()
    if task.answers is not None:
        assert sample.target in task.answers
    for m in sample.media:
        assert m.shape == (task.frames, 3, task.image_size, task.image_size) and m.dtype == torch.float32
        assert m.min() >= -1 and m.max() <= 1
    doc = task.training_document(rng(1))
    assert isinstance(doc, Document) and doc.text.count(MARKER) == len(doc.media) >= 1
    # the first marker comes before the first answer, so the Flamingo loss covers every answer
    first_answer = doc.text.split(" . ")[0].split()[-1]
    assert doc.text.index(MARKER) < doc.text.index(" " + first_answer, doc.text.index(MARKER))


def test_training_documents_vary_the_number_of_shots_up_to_max():
    task = tasks.get_task("fewshot_mapped")
    g = rng(0)
    counts = {len(task.training_document(g, max_shots=4).media) for _ in range(60)}
    assert counts == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("name", tasks.TASKS)
def test_same_seed_same_episode_other_seed_differs(name):
    task = tasks.get_task(name)
    a, b, c = (task.episode(rng(s), 3, "train") for s in (5, 5, 6))
    assert (a.prompt, a.target) == (b.prompt, b.target)
    assert all(torch.equal(x, y) for x, y in zip(a.media, b.media))
    assert not all(torch.equal(x, y) for x, y in zip(a.media, c.media))


@functools.lru_cache(maxsize=1)
def scan_table() -> dict[bytes, int]:
    table = {x.numpy().tobytes(): i for i, x in enumerate(tasks.digit_images(32)[:, 0])}
    assert len(table) == 1797  # every upsampled scan is distinct, so a frame names its scan
    return table


def scan_index(media: torch.Tensor) -> int:
    """Which scan a digit frame [1, C, H, W] shows."""
    return scan_table()[media[0, 0].numpy().tobytes()]


def test_digit_splits_are_disjoint_fixed_and_episodes_stay_in_their_split():
    train, held_out = tasks.digit_split("train"), tasks.digit_split("eval")
    assert not set(train) & set(held_out) and len(train) + len(held_out) == 1797
    assert len(held_out) == round(1797 * tasks.DIGITS_EVAL_FRACTION)
    for name in ("digits", "digit_sum"):
        task = tasks.get_task(name)
        for split, pool in (("train", train), ("eval", held_out)):
            sample = task.episode(rng(3), 8, split)
            found = [scan_index(m) for m in sample.media]
            assert set(found) <= set(pool)
            assert len(set(found)) == len(found)  # no scan twice in an episode


def test_digit_answers_are_the_scans_labels():
    from sklearn.datasets import load_digits

    labels = load_digits().target

    def label(m):
        return int(labels[scan_index(m)])

    s = tasks.get_task("digits").episode(rng(0), 0, "eval")
    assert s.target == str(label(s.media[0]))
    s = tasks.get_task("digit_sum").episode(rng(0), 0, "eval")
    assert s.prompt == f"{MARKER} plus {MARKER} is" and s.target == str(label(s.media[0]) + label(s.media[1]))


def test_mapped_labels_consistent_within_episode_and_vary_across():
    task = tasks.get_task("fewshot_mapped", attribute="colour", noise=0.0)
    mappings = set()
    for seed in range(20):
        shots = task.episode_shots(rng(seed), 12, "eval")
        mapping = {}
        for s in shots:
            assert mapping.setdefault(colour_of(s.media[0]), s.answer) == s.answer
        assert len(set(mapping.values())) == len(mapping)  # distinct classes, distinct labels
        assert set(mapping.values()) <= set(tasks.LABEL_WORDS)
        mappings.add(tuple(sorted(mapping.items())))
    assert len(mappings) >= 15


@pytest.mark.parametrize("name", ["fewshot_shapes", "fewshot_mapped", "video", "digits"])
def test_enough_shots_demonstrate_every_class_including_the_querys(name):
    task = tasks.get_task(name)
    n = len(task.classes)
    for seed, shots in enumerate(range(n, 10)):
        *demos, query = task.episode_shots(rng(seed), shots, "eval")
        assert len({d.answer for d in demos}) == n
        assert query.answer in {d.answer for d in demos}


def test_mapped_query_label_is_chance_without_demonstrations():
    task = tasks.get_task("fewshot_mapped")
    g = rng(0)
    answers = [task.episode(g, 0, "eval").target for _ in range(400)]
    counts = np.array([answers.count(w) for w in tasks.LABEL_WORDS])
    assert counts.min() > 400 / len(tasks.LABEL_WORDS) / 2  # every word, about evenly


def test_moving_clip_rolls_each_frame_by_its_shift():
    image = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    shifts = np.array([[0, 0], [1, -2], [-3, 17]])
    clip = tasks.moving_clip(image, shifts)
    for frame, shift in zip(clip, shifts):
        np.testing.assert_array_equal(frame, np.roll(image, tuple(shift), axis=(1, 2)))


def _position(frame: torch.Tensor) -> np.ndarray:
    """Centre of mass (row, column) of a noiseless frame's departure from its background."""
    ink = (frame - frame[:, :1, :1]).abs().sum(0).numpy()
    rows, cols = np.indices(ink.shape)
    return np.array([(ink * rows).sum(), (ink * cols).sum()]) / ink.sum()


@pytest.mark.parametrize("directions", [4, 8])
def test_video_moves_in_the_labelled_direction_and_reversal_is_the_opposite(directions):
    task = tasks.get_task("video", directions=directions, noise=0.0)
    for seed in range(3):
        clips = {name: task.draw(rng(seed), np.array([c]), "eval")[0][0] for c, name in enumerate(task.classes)}
        for name, clip in clips.items():
            dy, dx = tasks.DIRECTIONS[name]
            moved = _position(clip[-1]) - _position(clip[0])
            np.testing.assert_allclose(moved, np.array([dy, dx]) * task.travel, atol=0.5)
            # Same draws, opposite direction: the same frames in reverse order, exactly.
            opposite = next(k for k, v in tasks.DIRECTIONS.items() if v == (-dy, -dx))
            assert torch.equal(clip.flip(0), clips[opposite])


def test_video_path_is_centred_unless_led():
    plain = tasks.get_task("video", noise=0.0)
    centre = np.array([2, -1])
    np.testing.assert_array_equal(plain.shifts("right", centre).mean(0), centre)
    led = tasks.get_task("video", noise=0.0, lead=1.0)
    ahead = []
    for seed in range(20):  # same draws, so the same shape and centre: only the lead differs
        (a,), = plain.draw(rng(seed), np.array([3]), "eval")
        (b,), = led.draw(rng(seed), np.array([3]), "eval")
        shift = np.mean([_position(f) for f in b], axis=0) - np.mean([_position(f) for f in a], axis=0)
        assert abs(shift[0]) < 1e-6
        ahead.append(shift[1])
    assert 0 <= min(ahead) and max(ahead) <= led.travel / 2 + 0.5 and np.ptp(ahead) > 2


def test_video_frames_sample_the_same_path():
    short, long = tasks.get_task("video", frames=8), tasks.get_task("video", frames=30)
    centre = np.array([1, -2])
    a, b = short.shifts("down", centre), long.shifts("down", centre)
    np.testing.assert_array_equal(a[[0, -1]], b[[0, -1]])  # same start and end, finer steps
    assert np.all(np.diff(b[:, 0]) >= 0) and np.all(b[:, 1] == centre[1])


@pytest.mark.parametrize("kwargs, word", [({"travel": 1}, "travel"), ({"jitter": 9}, "jitter"),
                                          ({"lead": 1.5}, "lead"), ({"frames": 1}, "frames")])
def test_video_rejects_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        tasks.get_task("video", **kwargs)


def test_cross_image_answers_balanced_and_correct():
    task = tasks.get_task("cross_image", attributes=("colour",), noise=0.0)
    shots = task.episode_shots(rng(0), 239, "eval")
    yes = [s.answer == "yes" for s in shots]
    assert 0.4 < np.mean(yes) < 0.6
    for s in shots:
        assert "the second shape the same colour as the first ?" in s.prompt
        assert (colour_of(s.media[0]) == colour_of(s.media[1])) == (s.answer == "yes")
    both = tasks.get_task("cross_image", images=3)
    prompts = {s.prompt for s in both.episode_shots(rng(0), 99, "eval")}
    assert any("same shape" in p for p in prompts) and any("the third" in p for p in prompts)


def words(text):
    assert text == " ".join(text.split())  # single spaces, no edges
    return set(text.split())


def test_every_emitted_word_is_in_the_vocabulary():
    allowed = set(tasks.VOCABULARY) | {MARKER}
    assert len(set(tasks.VOCABULARY)) == len(tasks.VOCABULARY)
    assert all(" " not in w for w in tasks.VOCABULARY)
    seen = set()
    for name, kwargs in VARIANTS:
        task = tasks.get_task(name, **kwargs)
        g = rng(0)
        for _ in range(8):
            s = task.episode(g, 2, "train")
            seen |= words(s.prompt) | words(s.target)
        seen |= words(task.training_document(g).text)
        for _ in range(20):
            seen |= words(task.text_line(g))
    for line in tasks.text_corpus(300, seed=0):
        seen |= words(line)
    assert seen <= allowed, seen - allowed


def test_text_corpus_seeded_markerless_and_covers_every_task():
    lines = tasks.text_corpus(300, seed=1)
    assert lines == tasks.text_corpus(300, seed=1) != tasks.text_corpus(300, seed=2)
    assert not any(MARKER in line for line in lines)
    for pattern in (r"^shape : \w+ \w+", r"^label : \w+ \w+", r"^\w+ \w+ \w+ \w+ question : is the",
                    r"^direction : (up|down|left|right) ", r"^digit : \d \d", r"^\d plus \d is \d+"):
        assert any(re.match(pattern, line) for line in lines), pattern


def test_text_lines_answer_from_the_described_media():
    """In words, every answer follows from the text: what the LM can learn to read in context."""
    lines = tasks.text_corpus(400, seed=3)
    for line in lines:
        for shot in line.split(" . "):
            w = shot.split()
            if re.fullmatch(r"\d plus \d is \d+", shot):
                assert int(w[0]) + int(w[2]) == int(w[4])
            elif w[:2] in (["digit", ":"], ["shape", ":"], ["direction", ":"]):
                assert w[2] == w[3]
            elif "question" in w:
                attribute, first, second = w[w.index("same") + 1], w[0:2], w[2:4]
                same = first[0] == second[0] if attribute == "colour" else first[1] == second[1]
                assert w[-1] == ("yes" if same else "no"), shot
        if " label : " in line:  # nonce labels: one label per class within a line
            pairs = {tuple(s.split()[i] for i in (2, 3)) for s in line.split(" . ")}
            assert len({c for c, _ in pairs}) == len(pairs) == len({lab for _, lab in pairs})


def test_registry_answers_and_typo_suggestion():
    assert set(tasks.TASKS) == {"fewshot_shapes", "fewshot_mapped", "cross_image", "video", "digits", "digit_sum",
                                "multilingual"}
    for name in ENGLISH:
        task = tasks.get_task(name)
        assert task.name == name and task.answers and len(set(task.answers)) == len(task.answers)
    assert tasks.get_task("video", frames=6).frames == 6
    with pytest.raises(ValueError, match="did you mean 'digits'"):
        tasks.get_task("digts")
    with pytest.raises(ValueError, match="split"):
        tasks.get_task("digits").episode(rng(), 2, "test")
    with pytest.raises(ValueError, match="shots"):
        tasks.get_task("digits").episode(rng(), -1, "eval")
    with pytest.raises(ValueError, match="attribute"):
        tasks.get_task("fewshot_shapes", attribute="size")


@pytest.mark.parametrize("name", tasks.TASKS)
def test_a_batch_of_32_eight_shot_episodes_is_fast(name):
    task = tasks.get_task(name)
    task.episode(rng(), 1, "train")  # digits: load and upsample once
    start = time.perf_counter()
    batch = [task.episode(rng(i), 8, "train") for i in range(32)]
    assert time.perf_counter() - start < 1.0
    assert len(batch) == 32
