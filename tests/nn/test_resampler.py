import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multisense.nn import FrameEmbedding, PerceiverResampler


def small(**kw):
    torch.manual_seed(0)
    args = dict(dim=16, depth=2, num_latents=4, heads=2, dim_head=8, ff_mult=2)
    args.update(kw)
    return PerceiverResampler(**args).eval()


def test_published_layout_has_the_public_parameter_count():
    r = PerceiverResampler(dim=1024, depth=6, num_latents=64, heads=8, dim_head=64, ff_mult=4)
    D, inner = 1024, 512
    per_layer = 2 * 2 * D + D * inner + D * 2 * inner + inner * D + 2 * D + 2 * D * 4 * D
    assert sum(p.numel() for p in r.parameters()) == 64 * D + 6 * per_layer + 2 * D == 63_019_008
    assert all(m.bias is None for m in r.modules() if isinstance(m, torch.nn.Linear))


def test_latents_are_keys_and_values_too():
    """With every media token masked out, the latents still attend to themselves (no NaN, not zero)."""
    r = small()
    out = r(torch.randn(1, 1, 2, 3, 16), frame_mask=torch.zeros(1, 1, 2, dtype=torch.bool))
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_media_items_are_resampled_independently():
    r = small()
    x = torch.randn(2, 3, 2, 5, 16)
    out = r(x)
    assert out.shape == (2, 3, 4, 16)
    y = x.clone()
    y[1, 2] = torch.randn(2, 5, 16)
    out2 = r(y)
    assert torch.equal(out[0], out2[0]) and torch.equal(out[1, :2], out2[1, :2])
    assert not torch.allclose(out[1, 2], out2[1, 2])


@given(frames=st.integers(1, 4), pad=st.integers(1, 3), tokens=st.integers(1, 6), seed=st.integers(0, 1000))
@settings(max_examples=20, deadline=None)
def test_padded_frames_under_the_mask_change_nothing(frames, pad, tokens, seed):
    r = small(max_frames=8)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, frames, tokens, 16, generator=g)
    padded = torch.cat((x, 100 * torch.randn(1, 1, pad, tokens, 16, generator=g)), dim=2)
    mask = torch.tensor([[[True] * frames + [False] * pad]])
    # frame embeddings are indexed by position, so real frames get the same ones either way
    torch.testing.assert_close(r(padded, frame_mask=mask), r(x), rtol=1e-5, atol=1e-5)


def test_frame_embeddings_interpolate_linearly_in_time():
    emb = FrameEmbedding(8, 4)
    torch.testing.assert_close(emb(8, interpolate=True), emb.weight)
    out = emb(15, interpolate=True)  # the 8 table rows land exactly on every other new row
    torch.testing.assert_close(out[::2], emb.weight)
    torch.testing.assert_close(out[1::2], (emb.weight[:-1] + emb.weight[1:]) / 2)
    assert emb(30, interpolate=True).shape == (30, 4)
    assert torch.equal(emb(3), emb.weight[:3])


def test_more_frames_than_the_table_without_interpolation_is_an_error():
    r = small(max_frames=8)
    with pytest.raises(ValueError, match="30 frames.*hold 8.*interpolate_frames=True"):
        r(torch.randn(1, 1, 30, 2, 16))
    assert r(torch.randn(1, 1, 30, 2, 16), interpolate_frames=True).shape == (1, 1, 4, 16)


def test_frame_order_matters_with_frame_embeddings():
    r = small(max_frames=4)
    with torch.no_grad():
        r.frame_embs.weight.normal_()
    x = torch.randn(1, 1, 4, 3, 16)
    assert not torch.allclose(r(x), r(x.flip(2)))


@pytest.mark.parametrize("shape, match", [((2, 3, 16), r"x: expected shape \[B, M, F, S, D=16\], got \[2, 3, 16\]"),
                                          ((1, 1, 2, 3, 8), r"D=16\], got \[1, 1, 2, 3, 8\]")])
def test_bad_shapes_name_the_argument_and_both_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        small()(torch.randn(*shape))


def test_bad_frame_mask_shape_is_named():
    with pytest.raises(ValueError, match=r"frame_mask: expected shape \[B=1, M=1, F=2\], got \[1, 2\]"):
        small()(torch.randn(1, 1, 2, 3, 16), frame_mask=torch.ones(1, 2, dtype=torch.bool))


def test_attention_maps_are_distributions_over_media_that_skip_masked_frames():
    r = small()
    maps = r.attention_maps(torch.randn(2, 1, 3, 5, 16), frame_mask=torch.tensor([[[1, 1, 0]], [[1, 0, 0]]]).bool())
    assert maps.shape == (2, 1, 4, 15)
    assert (maps >= 0).all() and (maps.sum(-1) <= 1 + 1e-6).all() and (maps.sum(-1) > 0).all()
    assert not maps[0, 0, :, 10:].any() and not maps[1, 0, :, 5:].any()


@pytest.mark.parametrize("interpolate", [False, True])
def test_a_clip_reads_the_same_alone_and_padded_among_longer_clips(interpolate):
    """Each clip gets the frame table at its own length, not at the batch's padded frame count."""
    r = small(max_frames=8, interpolate_frames=interpolate)
    with torch.no_grad():
        r.frame_embs.weight.normal_()
    short, long = torch.randn(1, 1, 4, 3, 16), torch.randn(1, 1, 8, 3, 16)
    batch = torch.cat((torch.cat((short, torch.zeros_like(short)), 2), long))  # [2, 1, 8, 3, 16]
    mask = torch.tensor([[[True] * 4 + [False] * 4], [[True] * 8]])
    out = r(batch, frame_mask=mask)
    torch.testing.assert_close(out[:1], r(short), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1:], r(long), rtol=1e-5, atol=1e-5)


def test_without_interpolation_padding_beyond_the_table_is_no_error_while_every_clip_fits():
    r = small(max_frames=4)
    x = torch.randn(1, 2, 6, 3, 16)
    mask = torch.tensor([[[True] * 4 + [False] * 2, [True] * 3 + [False] * 3]])
    torch.testing.assert_close(r(x, frame_mask=mask)[:, :1], r(x[:, :1, :4]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="6 frames.*hold 4"):
        r(x, frame_mask=torch.ones(1, 2, 6, dtype=torch.bool))


def test_frame_embeddings_start_at_the_scale_of_standardised_features():
    # OpenFlamingo's unit-scale table: at 0.02 the frames barely differed at step 0 and the video
    # preset sat at chance for 1000+ steps on some seeds (docs/history.md)
    torch.manual_seed(0)
    table = FrameEmbedding(64, 256).weight
    assert 0.9 < float(table.detach().std()) < 1.1
