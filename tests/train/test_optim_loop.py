import pytest
import torch

from multisense.train.loop import fit, hf_progress
from multisense.train.optim import build_optimizer, warmup_cosine
from tests.conftest import interleaved_ids, tiny_flamingo


def test_gates_norms_and_latents_get_no_weight_decay_and_gates_their_own_lr():
    model = tiny_flamingo()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, gate_lr=1e-2)
    groups = {g["name"]: g for g in opt.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    gate_names = {names[id(p)] for p in groups["gates"]["params"]}
    assert gate_names and all(n.endswith("alpha") for n in gate_names) and groups["gates"]["lr"] == 1e-2
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert "resampler.latents" in no_decay and "marker_embedding" in no_decay
    assert all(groups["decay"]["weight_decay"] == 0.1 for _ in [0]) and groups["no_decay"]["weight_decay"] == 0
    decayed = {names[id(p)] for p in groups["decay"]["params"]}
    assert decayed and all(".weight" in n and "norm" not in n for n in decayed)
    counted = sum(len(g["params"]) for g in opt.param_groups)
    assert counted == sum(p.requires_grad for p in model.parameters())


def test_warmup_then_cosine_down_to_the_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    lrs = []
    for _ in range(24):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] == pytest.approx(0.1)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return type("Out", (), {"loss": ((self.w * x) ** 2).mean()})


def test_fit_reduces_loss_and_stops_on_a_non_finite_loss_before_stepping():
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, iter([{"x": torch.ones(3)}] * 20), steps=20, optimizer=opt, progress=False)
    assert history[-1]["loss"] < history[0]["loss"] and len(history) == 20
    before = model.w.detach().clone()
    with pytest.raises(FloatingPointError, match="step 1: loss is nan"):
        fit(model, iter([{"x": torch.tensor([float("nan")])}]), steps=1, optimizer=opt, progress=False)
    assert torch.equal(model.w.detach(), before)


def test_z_loss_adds_the_squared_log_normaliser_of_target_tokens_only():
    from multisense.train.loop import token_loss_sum

    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 1, 2, -100, 3], [-100, -100, 4, 5, 6]])
    ce, z = token_loss_sum(logits, labels, z_loss=0.1)
    keep = labels[:, 1:] != -100
    lse = torch.logsumexp(logits[:, :-1], -1)[keep]
    picked = logits[:, :-1][keep].gather(-1, labels[:, 1:][keep][:, None])[:, 0]
    torch.testing.assert_close(ce, (lse - picked).sum())
    torch.testing.assert_close(z, 0.1 * (lse ** 2).sum())


@pytest.mark.parametrize("before", [True, False])
def test_hf_progress_switches_transformers_bars_for_the_block_only(before):
    from transformers.utils import logging

    (logging.enable_progress_bar if before else logging.disable_progress_bar)()
    try:
        for enabled in (True, False):
            with hf_progress(enabled):
                assert logging.is_progress_bar_enabled() == enabled
            assert logging.is_progress_bar_enabled() == before
    finally:
        logging.enable_progress_bar()


def test_a_batch_whose_targets_the_budget_dropped_stops_the_step_with_what_was_lost():
    from tests.models.test_llava import pixels, tiny_llava

    model = tiny_llava(max_length=20)  # 16 image tokens + 4: the text's end does not fit
    ids = interleaved_ids(2, 10, [[0], [0]])
    batch = {"input_ids": ids, "pixel_values": pixels(2, 1), "labels": ids.clone()}
    optimizer = torch.optim.SGD(model.projector.parameters(), lr=0.0)
    with pytest.warns(UserWarning, match="dropped"), pytest.raises(ValueError, match=r"step 1: the model scored"):
        fit(model, iter([batch]), steps=1, optimizer=optimizer, progress=False)
