"""The demo's samples: object labels follow the scene left to right, and asking for them
changes nothing else in a batch."""

import numpy as np
import torch

from multisense.data import scenes
from multisense.data.scene_tasks import object_labels, training_batches
from multisense.train.pretrain import default_tokenizer


def test_object_labels_name_each_object_left_to_right_then_none():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = scenes.make_scene(rng)
        labels = object_labels(scene)
        assert labels.shape == (scenes.MAX_OBJECTS, 2)
        for k, obj in enumerate(scene.objects):
            assert list(scenes.COLOURS)[labels[k, 0]] == obj.colour
            assert scenes.SHAPES[labels[k, 1]] == obj.shape
        for k in range(len(scene.objects), scenes.MAX_OBJECTS):
            assert labels[k].tolist() == [len(scenes.COLOURS), len(scenes.SHAPES)]


def test_batches_with_objects_are_the_same_batches_plus_labels():
    tok = default_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    plain = training_batches(tok, batch_size=4, seed=3)
    with_objects = training_batches(tok, batch_size=4, seed=3, with_objects=True)
    for _ in range(2):
        a, b = next(plain), next(with_objects)
        assert b.pop("object_labels").shape == (4, 1, scenes.MAX_OBJECTS, 2)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
