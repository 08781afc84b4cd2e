"""The fused resampler path (folded LayerNorm affine, K/V written into buffers, custom backward)
against the plain layer (`ResamplerLayer.forward`, the published math), which is itself checked
against the equations written out here once more."""

import pytest
import torch

from multisense.nn import PerceiverResampler


def written_out(r: PerceiverResampler, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The published equations (nn/resampler.py's docstring), line by line: LN both, q from latents, k/v from
    [media ; latents]."""
    B, M, F_, S, D = x.shape
    if r.frame_embs is not None:
        x = x + r.frame_embs(F_).unsqueeze(1)
    x = x.reshape(B * M, F_ * S, D)
    lat = r.latents.expand(B * M, -1, -1)
    mask = None
    if frame_mask is not None:
        tok = frame_mask.reshape(B * M, F_, 1).expand(-1, -1, S).reshape(B * M, F_ * S)
        mask = torch.cat((tok, tok.new_ones(B * M, r.num_latents)), -1)[:, None, None, :]
    for layer in r.layers:
        a = layer.attn
        ln = layer.norm_latents(lat)
        kv_in = torch.cat((layer.norm_media(x), ln), dim=-2)
        q = a.q_norm(a.to_q(ln).unflatten(-1, (a.heads, -1)).transpose(1, 2))
        k, v = (t.unflatten(-1, (a.heads, -1)).transpose(1, 2) for t in a.to_kv(kv_in).chunk(2, -1))
        k = a.k_norm(k)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        o = (scores.softmax(-1) @ v).transpose(1, 2).flatten(-2)
        lat = lat + a.to_out(o)
        lat = lat + layer.ff(lat)
    return r.norm(lat).view(B, M, r.num_latents, D)


def reference(r: PerceiverResampler, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The same resampler through the library's plain layers."""
    fused, r.fused = r.fused, False
    try:
        return r(x, frame_mask)
    finally:
        r.fused = fused


@pytest.mark.parametrize("qk_norm", [False, True])
def test_the_plain_layers_are_the_written_out_equations(qk_norm):
    r = resampler(max_frames=3, qk_norm=qk_norm).double()
    x = torch.randn(2, 2, 3, 5, 32, dtype=torch.float64)
    fm = torch.tensor([[[1, 1, 1], [1, 0, 1]], [[1, 1, 1], [1, 1, 1]]]).bool()
    torch.testing.assert_close(reference(r, x, fm), written_out(r, x, fm))


def resampler(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(dim=32, depth=2, num_latents=4, heads=2, dim_head=8, ff_mult=2)
    args.update(kw)
    r = PerceiverResampler(**args)
    with torch.no_grad():  # non-trivial LayerNorm affines, so the folding is really exercised
        for name, p in r.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return r


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_forward_and_gradients_match_the_reference(masked, qk_norm):
    r = resampler(max_frames=3, qk_norm=qk_norm)
    x = torch.randn(2, 3, 3, 5, 32, dtype=torch.float64)
    r = r.double()
    fm = torch.rand(2, 3, 3) > 0.3 if masked else None
    out = r(x, fm)
    ref = reference(r, x, fm)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out * w).sum(), list(r.parameters()))
    grads_ref = torch.autograd.grad((ref * w).sum(), list(r.parameters()))
    for (name, _), g, gr in zip(r.named_parameters(), grads, grads_ref):
        torch.testing.assert_close(g, gr, msg=lambda m: f"{name}: {m}")


def test_media_gradient_when_the_media_need_one():
    r = resampler().double()
    x = torch.randn(1, 2, 2, 3, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 4, 32, dtype=torch.float64)
    g = torch.autograd.grad((r(x) * w).sum(), x)[0]
    g_ref = torch.autograd.grad((reference(r, x) * w).sum(), x)[0]
    torch.testing.assert_close(g, g_ref)


def test_fp32_and_bf16_autocast_stay_close_to_the_reference():
    r = resampler(dim=64, heads=4, dim_head=16)
    x = torch.randn(1, 1, 2, 16, 64)
    ref = reference(r, x)
    torch.testing.assert_close(r(x), ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = r(x)
        out.float().sum().backward()  # the custom backward runs under autocast too
    assert (out.float() - ref).norm() / ref.norm() < 2e-2
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in r.parameters())


def test_layers_with_different_eps_each_get_their_own_normalisation():
    r = resampler().double()
    r.layers[1].norm_media.eps = 1e-2
    x = torch.randn(1, 1, 2, 3, 32, dtype=torch.float64) * 0.05  # small enough for eps to matter
    torch.testing.assert_close(r(x), reference(r, x))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_inference_path_with_shared_kv_buffers_matches_the_reference(context, qk_norm):
    r = resampler(max_frames=2, qk_norm=qk_norm).double()
    x = torch.randn(2, 2, 2, 5, 32, dtype=torch.float64)
    fm = torch.rand(2, 2, 2) > 0.3
    ref = reference(r, x, fm)
    with context():
        torch.testing.assert_close(r(x, fm), ref)
        torch.testing.assert_close(r(x), reference(r, x))


def test_inference_under_autocast_computes_what_autocast_computes_with_autograd():
    """Without autograd the layers reuse buffers for K/V and for the bf16 weight copies."""
    r = resampler(dim=64, heads=4, dim_head=16)
    x = torch.randn(2, 1, 2, 16, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        train_mode = r(x)
        with torch.no_grad():
            inference = r(x)
    assert inference.dtype == train_mode.dtype
    torch.testing.assert_close(inference, train_mode.detach(), rtol=0, atol=0)
