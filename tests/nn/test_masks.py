import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multisense.nn import MediaRouting, check_media_counts, media_index, media_visibility, prefix_lm_mask

MODES = ["immediate", "all_previous", "window:2"]


def test_media_index_counts_markers_at_or_before_each_token():
    ids = torch.tensor([[5, 9, 5, 5, 9, 5, 9]])
    assert media_index(ids, 9).tolist() == [[0, 1, 1, 1, 2, 2, 3]]
    assert media_index(ids, 9, offset=torch.tensor([2])).tolist() == [[2, 3, 3, 3, 4, 4, 5]]


@pytest.mark.parametrize("mode", MODES)
@given(st.lists(st.integers(0, 1), min_size=1, max_size=24))
@settings(max_examples=25, deadline=None)
def test_every_mode_is_causal(mode, markers):
    idx = torch.tensor(markers).cumsum(0).unsqueeze(0)
    allowed = media_visibility(idx, num_media=int(idx.max()) + 1, mode=mode)
    m = torch.arange(allowed.shape[-1])
    assert not (allowed & (m >= idx.unsqueeze(-1))).any()  # never a later media item
    assert (allowed.any(-1) == (idx > 0)).all()  # everyone after a marker sees something


def test_modes_select_the_expected_media():
    idx = torch.tensor([[0, 1, 2, 3]])
    assert media_visibility(idx, 3, "immediate")[0].int().tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert media_visibility(idx, 3, "all_previous")[0].int().tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert media_visibility(idx, 3, "window:2")[0].int().tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 1]]


@pytest.mark.parametrize("bad", ["nearest", "window:0", "window:x", ""])
def test_unknown_mode_is_an_error_naming_mode(bad):
    with pytest.raises(ValueError, match="mode"):
        media_visibility(torch.zeros(1, 3, dtype=torch.long), 1, bad)


def test_count_mismatch_names_the_sample():
    check_media_counts(torch.tensor([1, 2]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="sample 1: 3 markers for 2 media"):
        check_media_counts(torch.tensor([1, 3]), torch.tensor([1, 2]))


@given(st.lists(st.lists(st.integers(0, 1), min_size=6, max_size=6), min_size=1, max_size=3))
@settings(max_examples=30, deadline=None)
def test_immediate_routing_sends_each_token_to_its_own_media_run(rows):
    idx = torch.tensor(rows).cumsum(-1)
    M = max(int(idx.max()), 1)
    r = MediaRouting.build(idx, num_media=M, num_latents=3, mode="immediate")
    B, L = idx.shape
    for flat in range(B * L):
        b, t = divmod(flat, L)
        if idx[b, t] == 0:
            continue
        slot = int(r.slot_of_token[flat])
        assert int(r.token_of_slot[slot]) == flat  # the round trip lands on the same token
        assert slot // r.run_length == b * M + int(idx[b, t]) - 1  # in the run of its media item


def test_prefix_lm_mask_gives_causal_prefix_and_block_masks():
    causal = prefix_lm_mask(torch.ones(1, 4, dtype=torch.bool))[0]
    assert torch.equal(causal, torch.ones(4, 4, dtype=torch.bool).tril())
    prefix = prefix_lm_mask(torch.tensor([[1, 0, 0, 1, 1]]).bool())[0]
    assert prefix[:3, :3].all() and not prefix[:3, 3:].any()  # bidirectional prefix of 3
    assert torch.equal(prefix[3:, :], torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool())
