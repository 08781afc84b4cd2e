import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multisense.nn import Modality, Perceiver, PerceiverDecoder, attend, attend_chunks


def small(**kw):
    torch.manual_seed(0)
    mods = kw.pop("modalities", {"camera": 12, "touch": Modality(dim=6, position="fourier", pos_dims=1),
                                 "wrench": Modality(dim=4, position="learned", max_tokens=16)})
    return Perceiver(dim=16, num_latents=5, modalities=mods, depth=1, heads=2, dim_head=8, cross_heads=2,
                     cross_dim_head=8, ff_mult=2, **kw).eval()


def batch(B=2, n=(7, 5, 9), seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = {"camera": torch.randn(B, n[0], 12, generator=g), "touch": torch.randn(B, n[1], 6, generator=g),
              "wrench": torch.randn(B, n[2], 4, generator=g)}
    positions = {"touch": torch.rand(B, n[1], 1, generator=g) * 2 - 1}
    return inputs, positions


def test_attend_chunks_equals_attend_and_gives_each_groups_mass():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    mask = torch.rand(2, 1, 1, 10) > 0.3
    mask[1, ..., :] = False  # sample 1 sees nothing: zeros, not NaN
    cuts = [0, 3, 4, 10]
    chunks = [(k[..., a:b, :], v[..., a:b, :], mask[..., a:b], i % 2) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    out, mass = attend_chunks(q, iter(chunks), groups=2)
    torch.testing.assert_close(out, attend(q, k, v, mask))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    weights = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask, float("-inf")).softmax(-1)[0]
    group_of_key = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    torch.testing.assert_close(mass[1, 0], weights[..., group_of_key == 1].sum(-1))
    torch.testing.assert_close(mass[:, 0].sum(0), torch.ones(3, 4))
    assert torch.equal(mass[:, 1], torch.zeros_like(mass[:, 1]))


def test_attend_chunks_keeps_the_weights_of_the_softmax_over_every_chunk():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 10, 8) * 3, torch.randn(2, 3, 10, 8)
    mask = torch.rand(2, 1, 4, 10) > 0.4
    mask[0, :, 1, :6] = False  # a row that sees nothing in the first two chunks
    mask[1, :, 2] = False  # a row that sees nothing at all
    cuts = [0, 3, 6, 10]
    chunks = [(k[..., a:b, :], v[..., a:b, :], mask[..., a:b], 0) for a, b in zip(cuts, cuts[1:])]
    out, mass, weights = attend_chunks(q, iter(chunks), weights=True)
    assert mass is None and [w.shape[-1] for w in weights] == [3, 3, 4]
    expected = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
    torch.testing.assert_close(torch.cat(weights, -1), expected)
    torch.testing.assert_close(torch.cat(weights, -1) @ v, out)


def test_attend_chunks_has_finite_gradients_where_a_row_sees_nothing_in_a_chunk():
    q = torch.randn(1, 1, 2, 4, requires_grad=True)
    k, v = torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4)
    mask = torch.tensor([[True, False, False, True, True, True], [False] * 6])[None, None]
    out, _ = attend_chunks(q, iter([(k[..., :3, :], v[..., :3, :], mask[..., :3], 0),
                                    (k[..., 3:, :], v[..., 3:, :], mask[..., 3:], 0)]))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("schedule", [{}, {"num_blocks": 3, "repeat_cross_attend": True},
                                      {"balance_modalities": True}])
def test_chunked_cross_attention_equals_all_at_once(schedule):
    inputs, positions = batch()
    whole = small(**schedule)(inputs, positions=positions)
    chunked = small(chunk_size=3, **schedule)(inputs, positions=positions)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_a_float_mask_is_an_additive_bias_in_attend_and_attend_chunks():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    mask = torch.rand(2, 1, 1, 10) > 0.3
    mask[1] = False
    zero_bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(attend(q, k, v, zero_bias), attend(q, k, v, mask))
    bias = torch.randn(2, 1, 1, 10).masked_fill(~mask, float("-inf"))
    weights = ((q @ k.transpose(-1, -2)) / 8 ** 0.5 + bias).softmax(-1)
    out = attend(q, k, v, bias)
    torch.testing.assert_close(out[0], (weights @ v)[0])
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # no allowed key: zero, as with a bool mask
    chunked, _ = attend_chunks(q, iter([(k[..., :4, :], v[..., :4, :], bias[..., :4], 0),
                                        (k[..., 4:, :], v[..., 4:, :], bias[..., 4:], 0)]))
    torch.testing.assert_close(chunked, out)


@pytest.mark.parametrize("chunk", [None, 2])
def test_balanced_modalities_share_attention_equally_at_equal_scores_whatever_their_token_counts(chunk):
    inputs, positions = batch(n=(7, 2, 9))
    mask = {"wrench": torch.ones(2, 9, dtype=torch.bool)}
    mask["wrench"][1, 3:] = False  # sample 1: 3 real wrench tokens
    for balance, expected in ((True, lambda b, n: 1 / 3), (False, lambda b, n: n / (9 + (9 if b == 0 else 3)))):
        model = small(balance_modalities=balance, chunk_size=chunk)
        model.cross[0].attn.to_q.weight.data.zero_()  # every score 0: the attention is the prior alone
        _, shares = model(inputs, mask=mask, positions=positions, return_attention=True)
        for b in range(2):
            counts = {"camera": 7, "touch": 2, "wrench": 9 if b == 0 else 3}
            for name, n in counts.items():
                torch.testing.assert_close(shares[name][b], torch.full((5,), expected(b, n)))


@settings(max_examples=15, deadline=None)
@given(pad=st.lists(st.integers(0, 4), min_size=3, max_size=3), chunk=st.sampled_from([None, 2, 5]),
       balance=st.booleans())
def test_padding_does_not_change_the_latents(pad, chunk, balance):
    model = small(chunk_size=chunk, balance_modalities=balance)
    inputs, positions = batch()
    ref = model(inputs, positions=positions)
    padded, mask, pos = {}, {}, {}
    for (name, x), p in zip(inputs.items(), pad):
        padded[name] = torch.cat((x, torch.randn(x.shape[0], p, x.shape[2]) * 100), dim=1)
        mask[name] = torch.cat((torch.ones(x.shape[:2], dtype=torch.bool), torch.zeros(x.shape[0], p, dtype=torch.bool)), 1)
        if name in positions:
            pos[name] = torch.cat((positions[name], torch.rand(x.shape[0], p, 1)), dim=1)
    torch.testing.assert_close(model(padded, mask=mask, positions=pos), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("balance", [False, True])
def test_a_whole_modality_masked_equals_the_modality_absent(balance):
    model = small(balance_modalities=balance)
    inputs, positions = batch()
    mask = {"touch": torch.zeros(2, 5, dtype=torch.bool)}
    without = {k: v for k, v in inputs.items() if k != "touch"}
    torch.testing.assert_close(model(inputs, mask=mask, positions=positions), model(without), rtol=1e-5, atol=1e-6)


def masked_batch(garbage: float):
    """A batch with about half of every modality's tokens masked (touch wholly in sample 1), once
    with zeros and once with `garbage` at the masked tokens and their positions."""
    inputs, positions = batch()
    g = torch.Generator().manual_seed(2)
    mask = {n: torch.rand(x.shape[:2], generator=g) > 0.5 for n, x in inputs.items()}
    mask["touch"][1] = False
    clean, dirty = {}, {}
    for name, values in (("inputs", inputs), ("positions", positions)):
        clean[name] = {n: x.masked_fill(~mask[n][..., None], 0.0) for n, x in values.items()}
        dirty[name] = {n: x.masked_fill(~mask[n][..., None], garbage) for n, x in values.items()}
    return mask, clean, dirty


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), float("-inf"), 3e38])
@pytest.mark.parametrize("balance", [False, True])
def test_values_at_masked_positions_change_nothing_chunked_or_not(garbage, balance):
    mask, clean, dirty = masked_batch(garbage)
    whole = small(balance_modalities=balance)
    ref, ref_shares = whole(clean["inputs"], mask=mask, positions=clean["positions"], return_attention=True)
    for chunk in (None, 3):
        model = small(balance_modalities=balance, chunk_size=chunk)
        out, shares = model(dirty["inputs"], mask=mask, positions=dirty["positions"], return_attention=True)
        assert torch.isfinite(out).all()
        if chunk is None:
            assert torch.equal(model(dirty["inputs"], mask=mask, positions=dirty["positions"]),
                               model(clean["inputs"], mask=mask, positions=clean["positions"]))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        for name in ref_shares:
            torch.testing.assert_close(shares[name], ref_shares[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("balance", [False, True])
def test_a_nan_at_a_real_token_shows_as_nan_chunked_or_not(balance):
    inputs, positions = batch()
    inputs["camera"][0, 2] = float("nan")
    for chunk in (None, 3):
        out = small(balance_modalities=balance, chunk_size=chunk)(inputs, positions=positions)
        assert out[0].isnan().all() and torch.isfinite(out[1]).all()


def test_a_mask_that_is_not_bool_is_refused_with_what_was_expected():
    model = small()
    inputs, positions = batch()
    keep = torch.rand(2, 5) > 0.5
    additive = torch.zeros(2, 5).masked_fill(~keep, float("-inf"))  # SDPA's convention: 0 = keep
    with pytest.raises(ValueError, match=r"mask\['touch'\]: expected a bool mask \(True = a real token\)"):
        model(inputs, mask={"touch": additive}, positions=positions)


def test_a_latent_with_every_key_masked_gets_exactly_zero_from_cross_attention():
    model = small()
    inputs, positions = batch()
    mask = {n: torch.ones(x.shape[:2], dtype=torch.bool) for n, x in inputs.items()}
    for m in mask.values():
        m[1] = False  # sample 1: every token of every modality dropped
    seen = {}
    model.cross[0].attn.to_out.register_forward_hook(lambda mod, args, out: seen.setdefault("in", args[0]))
    model(inputs, mask=mask, positions=positions)
    assert torch.equal(seen["in"][1], torch.zeros_like(seen["in"][1]))
    assert seen["in"][0].abs().sum() > 0


def test_inputs_are_matched_by_name_not_order_and_positions_are_per_sample():
    model = small()
    inputs, positions = batch()
    reordered = dict(reversed(list(inputs.items())))
    torch.testing.assert_close(model(reordered, positions=positions), model(inputs, positions=positions))
    one = model({k: v[:1] for k, v in inputs.items()}, positions={"touch": positions["touch"][:1]})
    torch.testing.assert_close(model(inputs, positions=positions)[:1], one, rtol=1e-5, atol=1e-6)
    moved = {"touch": positions["touch"].clone()}
    moved["touch"][1] = -moved["touch"][1]
    out = model(inputs, positions=moved)
    torch.testing.assert_close(out[0], model(inputs, positions=positions)[0])
    assert not torch.allclose(out[1], model(inputs, positions=positions)[1])


def test_attention_shares_sum_to_one_over_modalities():
    model = small()
    inputs, positions = batch()
    _, shares = model(inputs, positions=positions, return_attention=True)
    assert set(shares) == {"camera", "touch", "wrench"}
    torch.testing.assert_close(sum(shares.values()), torch.ones(2, 5))
    _, chunked = small(chunk_size=2)(inputs, positions=positions, return_attention=True)
    for name in shares:
        torch.testing.assert_close(chunked[name], shares[name])


def reference_weights(model: Perceiver, inputs: dict, mask: dict, positions: dict) -> dict:
    """The first cross-attention's softmax over every token of every modality, by hand from the
    model's weights: name -> [B, H, R, N_m]."""
    cross = model.cross[model.schedule[0][0]].attn
    block = model.cross[model.schedule[0][0]]
    inner = cross.to_q.out_features
    heads, dh = cross.heads, inner // cross.heads
    q = cross.to_q(block.norm_latents(model.latents)).view(-1, heads, dh)  # [R, H, Dh]
    names = [n for n in model.names if n in inputs]
    scores = []
    for n in names:
        keep = mask[n] if n in mask else torch.ones(inputs[n].shape[:2], dtype=torch.bool)
        tokens = model.inputs[n](inputs[n], positions.get(n))
        k = cross.to_kv(block.norm_inputs(tokens))[..., :inner].unflatten(-1, (heads, dh))  # [B, N, H, Dh]
        s = torch.einsum("rhd,bnhd->bhrn", q, k) / dh ** 0.5
        if model.balance_modalities:
            s = s - keep.sum(1).clamp(min=1).log()[:, None, None, None]
        scores.append(s.masked_fill(~keep[:, None, None, :], float("-inf")))
    weights = torch.cat(scores, -1).softmax(-1).nan_to_num(0.0)  # a latent that sees nothing: 0
    return dict(zip(names, weights.split([inputs[n].shape[1] for n in names], -1)))


@pytest.mark.parametrize("balance", [False, True])
def test_attention_weights_are_the_softmax_over_every_token_chunked_or_not(balance):
    inputs, positions = batch(B=3)
    g = torch.Generator().manual_seed(3)
    mask = {n: torch.rand(x.shape[:2], generator=g) > 0.3 for n, x in inputs.items()}
    mask["touch"][1] = False  # sample 1 without touch
    for m in mask.values():
        m[2] = False  # sample 2 sees nothing
    expected = reference_weights(small(balance_modalities=balance), inputs, mask, positions)
    for chunk in (None, 3):
        model = small(balance_modalities=balance, chunk_size=chunk)
        weights = model.attention_weights(inputs, mask=mask, positions=positions)
        _, shares = model(inputs, mask=mask, positions=positions, return_attention=True)
        assert set(weights) == set(inputs)
        for name, w in weights.items():
            torch.testing.assert_close(w, expected[name])
            torch.testing.assert_close(w.sum(-1).mean(1), shares[name])
            assert torch.equal(w.masked_fill(mask[name][:, None, None, :], 0.0), torch.zeros_like(w))
        total = sum(w.sum(-1) for w in weights.values())
        torch.testing.assert_close(total, torch.tensor([1.0, 1.0, 0.0])[:, None, None].expand_as(total))


def test_errors_name_the_sensor():
    model = small(modalities={"camera": 12, "touch": Modality(dim=6, optional=False)})
    inputs, _ = batch()
    with pytest.raises(ValueError, match="'microphone'"):
        model({"camera": inputs["camera"], "touch": inputs["touch"], "microphone": inputs["camera"]})
    with pytest.raises(ValueError, match="'touch' is missing"):
        model({"camera": inputs["camera"]})
    with pytest.raises(ValueError, match=r"inputs\[.touch.\]: expected shape \[B=2, N, C=6\], got \[2, 7, 12\]"):
        model({"camera": inputs["camera"], "touch": inputs["camera"]})
    fourier = small()
    with pytest.raises(ValueError, match=r"positions\['touch'\]"):
        fourier(inputs)


def test_weight_sharing_schedule():
    shared = small(num_blocks=4, repeat_cross_attend=True)
    assert shared.schedule == [(0, 0), (1, 0), (1, 0), (1, 0)]
    assert len(shared.cross) == 2 and len(shared.towers) == 1
    own = small(num_blocks=3, repeat_cross_attend=True, share_weights=False)
    assert own.schedule == [(0, 0), (1, 1), (2, 2)] and len(own.cross) == 3
    once = small(num_blocks=3)
    assert once.schedule == [(0, 0), (None, 0), (None, 0)] and len(once.cross) == 1
    inputs, positions = batch()
    assert shared(inputs, positions=positions).shape == (2, 5, 16)


def test_decoder_maps_queries_out():
    dec = PerceiverDecoder(16, out_dim=3, num_queries=2, dim_query=8, heads=2, dim_head=4)
    lat = torch.randn(4, 5, 16)
    assert dec(lat).shape == (4, 2, 3)
    assert dec(lat, torch.randn(4, 7, 8)).shape == (4, 7, 3)
