"""Procedural scenes: determinism, scene invariants and the text templates."""

import numpy as np
import pytest

from multisense.data import scenes


@pytest.fixture(scope="module")
def batch():
    return scenes.make_scenes(64, seed=7)


def test_same_seed_same_scenes_and_texts(batch):
    images, items = batch
    again_images, again_items = scenes.make_scenes(64, seed=7)
    np.testing.assert_array_equal(images, again_images)
    assert [scenes.caption(s) for s in items] == [scenes.caption(s) for s in again_items]
    assert scenes.text_corpus(50, seed=3) == scenes.text_corpus(50, seed=3)


def test_different_seeds_differ(batch):
    images, items = batch
    other_images, other_items = scenes.make_scenes(64, seed=8)
    assert not np.array_equal(images, other_images)
    assert [scenes.caption(s) for s in items] != [scenes.caption(s) for s in other_items]
    assert scenes.text_corpus(50, seed=3) != scenes.text_corpus(50, seed=4)


@pytest.mark.parametrize("image_size", [32, 48])
def test_images_are_unit_range_float32(image_size):
    images, items = scenes.make_scenes(8, seed=0, image_size=image_size)
    assert images.shape == (8, 3, image_size, image_size)
    assert images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert all(s.image.shape == (3, image_size, image_size) for s in items)


def test_objects_distinct_sorted_and_inside(batch):
    _, items = batch
    counts = set()
    for scene in items:
        objects = scene.objects
        counts.add(len(objects))
        assert len({o.colour for o in objects}) == len(objects)
        assert len({o.shape for o in objects}) == len(objects)
        xs = [o.x for o in objects]
        assert xs == sorted(xs) and len(set(xs)) == len(xs)
        for o in objects:
            assert o.colour in scenes.COLOURS and o.shape in scenes.SHAPES
            assert o.size / 2 <= o.x <= 32 - o.size / 2 and o.size / 2 <= o.y <= 32 - o.size / 2
    assert counts == {1, 2, 3}


def test_objects_are_painted_in_their_colour(batch):
    _, items = batch
    for scene in items:
        for o in scene.objects:
            centre = scene.image[:, int(o.y), int(o.x)]
            # Closer to its own colour than to any other colour, despite noise.
            distances = {name: np.abs(centre - np.array(rgb)).sum() for name, rgb in scenes.COLOURS.items()}
            assert min(distances, key=distances.get) == o.colour


def test_caption_names_objects_left_to_right(batch):
    _, items = batch
    for scene in items:
        text = scenes.caption(scene)
        positions = [text.index(f"a {o.colour} {o.shape}") for o in scene.objects]
        assert positions == sorted(positions)
        assert text.count(" a ") + 1 == len(scene.objects)
    one = scenes.Scene(image=np.zeros((3, 4, 4)), objects=(scenes.SceneObject("red", "circle", 5, 5, 8),))
    assert scenes.caption(one) == "a red circle"


def test_answers_are_in_answer_sets_and_correct(batch):
    _, items = batch
    rng = np.random.default_rng(0)
    position_answers = []
    for scene in items:
        qas = scenes.question_answers(scene, rng)
        kinds = [qa.kind for qa in qas]
        assert kinds[:3] == ["colour", "shape", "count"]
        assert ("position" in kinds) == (len(scene.objects) >= 2)
        by_shape = {o.shape: o for o in scene.objects}
        by_colour = {o.colour: o for o in scene.objects}
        for kind, question, subject, answer in qas:
            assert answer in scenes.ANSWER_SETS[kind]
            assert question.endswith(" ?")
            if kind == "colour":  # the subject is the shape the question names
                assert question == f"what colour is the {subject} ?" and by_shape[subject].colour == answer
            if kind == "shape":
                assert question == f"what shape is the {subject} one ?" and by_colour[subject].shape == answer
            if kind == "count":
                assert answer == scenes.NUMBER_WORDS[len(scene.objects)] and subject == ""
            if kind == "position":
                by_name = {f"{o.colour} {o.shape}": o.x for o in scene.objects}
                first, second = question.removeprefix("is the ").removesuffix(" ?").split(" left of the ")
                assert answer == ("yes" if by_name[first] < by_name[second] else "no")
                assert subject == second.split()[-1]
                position_answers.append(answer)
    # Both answers occur in roughly equal numbers.
    assert 0.25 < position_answers.count("yes") / len(position_answers) < 0.75


def test_order_lines_follow_the_fixed_cycle():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(40):
        name, words = scenes.order_line(rng).removesuffix(" .").split(" : ")
        cycle = tuple(scenes.COLOURS) if name == "colours" else scenes.SHAPES
        assert name in ("colours", "shapes")
        words = words.split()
        starts.add(words[0])
        first = cycle.index(words[0])
        assert words == [cycle[(first + i) % len(cycle)] for i in range(len(cycle) + 2)]
    assert len(starts) > 4  # random starting words


def test_prompt_templates(batch):
    _, items = batch
    scene = items[0]
    assert scenes.caption_prompt() == "caption :"
    assert scenes.caption_text(scene) == f"caption : {scenes.caption(scene)} ."
    question = "how many shapes are there ?"
    assert scenes.qa_prompt(question) == f"question : {question} answer :"
    assert scenes.qa_text(question, "two").endswith("answer : two")
    colour = "what colour is the circle ?"
    assert scenes.qa_prompt(colour, "circle") == f"question : {colour} answer : circle"
    assert scenes.qa_text(colour, "red", "circle") == f"question : {colour} answer : circle red"


def test_text_is_single_spaced_words_from_the_vocabulary():
    rng = np.random.default_rng(0)
    lines = scenes.text_corpus(300, seed=0) + [scenes.order_line(rng) for _ in range(20)]
    assert any(line.startswith("caption :") for line in lines)
    assert any(line.startswith("question :") for line in lines)
    for line in lines:
        assert line == " ".join(line.split())
        assert set(line.split()) <= set(scenes.VOCABULARY)
