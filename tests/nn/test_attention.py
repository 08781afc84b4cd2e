import torch

from multisense.nn import Attention, attend


def reference(q, k, v, mask):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(scores.softmax(-1)) @ v


def test_attend_matches_softmax_reference_on_allowed_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.rand(2, 1, 5, 7) > 0.4
    mask[..., 0] = True
    torch.testing.assert_close(attend(q, k, v, mask), reference(q, k, v, mask.expand(2, 3, 5, 7)))


def test_row_with_no_allowed_key_is_exactly_zero_not_nan():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    mask = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    mask[..., 1, :] = False
    out = attend(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
    assert out[:, :, 0].abs().sum() > 0


def test_attention_module_has_no_biases_and_keeps_width():
    attn = Attention(16, dim_context=12, heads=2, dim_head=4, qk_norm=True)
    assert all(m.bias is None for m in attn.modules() if isinstance(m, torch.nn.Linear))
    out = attn(torch.randn(3, 5, 16), torch.randn(3, 9, 12))
    assert out.shape == (3, 5, 16)
