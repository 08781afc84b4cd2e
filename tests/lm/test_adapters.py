import pytest
import torch
from torch import nn

from multisense.lm.adapters import find_decoder_layers
from multisense.lm.inject import cross_attn_layer_ids, hook_before_layers
from tests.conftest import tiny_lm


def test_finds_the_decoder_layers_of_each_architecture(arch):
    lm = tiny_lm(arch)
    path, layers = find_decoder_layers(lm)
    assert isinstance(layers, nn.ModuleList) and len(layers) == lm.config.num_hidden_layers


def test_generic_fallback_finds_the_layer_list_of_an_unknown_model_type():
    lm = tiny_lm("llama")
    lm.config.model_type = "my_new_llama"
    path, layers = find_decoder_layers(lm)
    assert path == "model.layers"


def test_unplaceable_model_gets_an_error_naming_the_attribute_to_give():
    lm = tiny_lm("llama")
    lm.config.model_type = "mystery"
    lm.config.num_hidden_layers = 99
    with pytest.raises(ValueError, match="decoder_layers_attr="):
        find_decoder_layers(lm)
    assert find_decoder_layers(lm, "model.layers")[0] == "model.layers"
    with pytest.raises(ValueError, match="decoder_layers_attr: .* no attribute 'model.blocks'"):
        find_decoder_layers(lm, "model.blocks")


def test_every_nth_layer_counting_so_the_last_has_one():
    assert cross_attn_layer_ids(8, 4) == [3, 7]
    assert cross_attn_layer_ids(3, 1) == [0, 1, 2]
    with pytest.raises(ValueError, match="cross_attn_every"):
        cross_attn_layer_ids(4, 0)


def test_hooks_rewrite_hidden_states_and_leave_weights_and_names_alone(arch):
    lm = tiny_lm(arch)
    names = list(lm.state_dict())
    ids = torch.randint(3, 60, (1, 6))
    ref = lm(ids).logits
    _, layers = find_decoder_layers(lm)
    handles = hook_before_layers(layers, [0], lambda i, h: h * 2)
    assert not torch.allclose(lm(ids).logits, ref)
    for h in handles:
        h.remove()
    assert torch.equal(lm(ids).logits, ref) and list(lm.state_dict()) == names
