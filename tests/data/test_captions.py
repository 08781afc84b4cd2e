"""The demo's samples: object labels follow the scene left to right, and asking for them
changes nothing else in a batch."""

import numpy as np
import torch

from multisense.backbones.language import default_tokenizer
from multisense.data import scenes
from multisense.data.tasks.captions import OBJECT_CLASSES, PLACES, object_labels, training_batches


def test_object_labels_name_each_object_left_to_right_then_none():
    rng = np.random.default_rng(0)
    seen_places = set()
    for _ in range(30):
        scene = scenes.make_scene(rng)
        labels = object_labels(scene)
        n = len(scene.objects)
        assert labels.shape == (scenes.MAX_OBJECTS, 3)
        for k, obj in enumerate(scene.objects):
            assert list(scenes.COLOURS)[labels[k, 0]] == obj.colour
            assert scenes.SHAPES[labels[k, 1]] == obj.shape
            place = PLACES[labels[k, 2]]
            seen_places.add(place)
            # nothing left of the leftmost, nothing right of the rightmost, one object: "only"
            assert (place == "only") == (n == 1)
            assert (place == "leftmost") == (n > 1 and all(o.x > obj.x for o in scene.objects if o is not obj))
            assert (place == "rightmost") == (n > 1 and all(o.x < obj.x for o in scene.objects if o is not obj))
        for k in range(n, scenes.MAX_OBJECTS):
            assert tuple(labels[k].tolist()) == OBJECT_CLASSES
    assert seen_places == set(PLACES)


def test_batches_with_objects_are_the_same_batches_plus_labels():
    tok = default_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    plain = training_batches(tok, batch_size=4, seed=3)
    with_objects = training_batches(tok, batch_size=4, seed=3, with_objects=True)
    for _ in range(2):
        a, b = next(plain), next(with_objects)
        assert b.pop("object_labels").shape == (4, 1, scenes.MAX_OBJECTS, len(OBJECT_CLASSES))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
