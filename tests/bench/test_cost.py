import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from multisense.bench.cost import attention_cost
from multisense.cli import main as cli


def test_the_issue_example_against_a_hand_calculation(capsys):
    cost = attention_cost(cameras=5, fps=30, seconds=3, patches=256, latents=64, dim=1024)
    n = 5 * 30 * 3 * 256
    assert cost["input_tokens"] == n == 115_200
    # by hand: 64 latents x 115,200 keys x 1024 wide, a multiply and an add each, for Q K^T and A V
    assert cost["perceiver_cross_attention"]["attention_flops"] == 2 * 2 * 64 * 115_200 * 1024 == 30_198_988_800
    assert cost["full_self_attention"]["attention_flops"] == 2 * 2 * 115_200 ** 2 * 1024
    assert cost["ratio"]["attention_flops"] == 115_200 / 64 == 1800
    assert cost["full_self_attention"]["score_bytes"] == 8 * 115_200 ** 2 * 4
    assert cost["lm_context"]["llava"] == {"tokens": 115_200, "fits": False}
    assert cost["lm_context"]["flamingo"] == {"tokens": 5, "fits": True}
    assert cli(["cost", "--cameras", "5", "--fps", "30", "--seconds", "3", "--patches", "256", "--latents", "64",
                "--dim", "1024"]) == 0
    assert "115,200 tokens" in capsys.readouterr().out


def test_the_attention_formulas_are_what_flop_counter_mode_counts():
    r, n, d = 8, 96, 32
    q, k, v = torch.randn(r, d), torch.randn(n, d), torch.randn(n, d)
    with FlopCounterMode(display=False) as counter:
        torch.softmax(q @ k.T, -1) @ v
    cost = attention_cost(cameras=1, fps=1, seconds=1, patches=n, latents=r, dim=d, heads=1)
    assert counter.get_total_flops() == cost["perceiver_cross_attention"]["attention_flops"]
    x = torch.randn(n, d)
    w = [torch.randn(d, d) for _ in range(4)]
    with FlopCounterMode(display=False) as counter:
        qq, kk, vv = x @ w[0], x @ w[1], x @ w[2]
        (torch.softmax(qq @ kk.T, -1) @ vv) @ w[3]
    assert counter.get_total_flops() == cost["full_self_attention"]["total_flops"]


def test_a_non_positive_size_is_named():
    with pytest.raises(ValueError, match="--latents: expected a positive finite number, got 0"):
        attention_cost(cameras=1, fps=1, seconds=1, patches=4, latents=0, dim=8)


def test_sizes_that_rounding_makes_uneven_still_count_and_bad_sizes_are_named():
    assert attention_cost(cameras=3, fps=0.1, seconds=10, patches=256, latents=64, dim=64)["input_tokens"] == 768
    for name, kw in (("bytes", dict(bytes_per_score=-2)), ("fps", dict(fps=float("inf"))),
                     ("seconds", dict(seconds=float("nan")))):
        with pytest.raises(ValueError, match=f"--{name}"):
            attention_cost(**{**dict(cameras=1, fps=1, seconds=1, patches=4, latents=2, dim=8), **kw})
