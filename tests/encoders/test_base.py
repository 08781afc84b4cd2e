"""Media input checked at the door: what a vision tower would fail on deep inside, or take silently."""

import pytest
import torch
import transformers as tf

from multisense.encoders import as_encoder
from multisense.encoders.base import media_tokens
from tests.conftest import tiny_vision


def tokens(pixels):
    encoder = as_encoder(tiny_vision())
    return media_tokens(encoder, pixels, None, None, encoder.dim)


def test_good_pixels_pass():
    assert tokens(torch.rand(2, 1, 1, 3, 16, 16)).shape[:3] == (2, 1, 1)


@pytest.mark.parametrize("pixels, match", [
    (torch.zeros(2, 1, 1, 3, 16, 16, dtype=torch.uint8), "uint8 pixels"),
    (torch.rand(2, 1, 1, 3, 32, 32), r"\[32, 32\] pixels; this vision encoder was built for 16x16"),
    (torch.rand(2, 0, 1, 3, 16, 16), "no frames to encode"),
    (torch.rand(2, 1, 3, 16, 16), r"pixel_values: expected shape \[B, M, F, C, H, W\]"),
])
def test_bad_pixels_are_named(pixels, match):
    with pytest.raises(ValueError, match=match):
        tokens(pixels)


def test_pixels_in_0_255_get_a_warning():
    with pytest.warns(UserWarning, match=r"normalised pixels .* not \[0, 255\]"):
        tokens(torch.rand(1, 1, 1, 3, 16, 16) * 255)


def test_a_dual_tower_clip_is_refused_with_what_to_pass():
    vision = dict(image_size=16, patch_size=4, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=48)
    text = dict(vocab_size=32, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    both = tf.CLIPModel(tf.CLIPConfig(vision_config=vision, text_config=text))
    with pytest.raises(ValueError, match="dual-tower CLIPModel; pass its vision tower"):
        as_encoder(both)
