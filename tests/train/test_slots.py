"""Object-slot supervision: leaves the model's output alone, trains the resampler to hold one
object per latent, and names bad labels."""

import pytest
import torch

from multisense.tokens import IGNORE_INDEX as IGNORE
from multisense.train.optim import build_optimizer
from multisense.train.slots import LatentObjectLoss
from tests.conftest import interleaved_ids, tiny_flamingo
from tests.models.test_flamingo import pixels


def batch(b=3, m=2, seed=0):
    ids = interleaved_ids(b, 10, [[1, 5][:m]] * b, seed=seed)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels(b, m, seed=seed)}


def test_wrapped_output_equals_the_model_and_latents_are_those_it_attends_to():
    model = tiny_flamingo(gates=0.5)
    wrapped = LatentObjectLoss(model, num_classes=(3, 2))
    x = batch()
    labels = torch.zeros(3, 2, 2, 2, dtype=torch.long)
    out = wrapped(labels, **x)
    assert torch.equal(out.logits, model(**x).logits)
    latents, _ = model.encode_media(x["pixel_values"])
    assert torch.equal(out.media_latents, latents)
    assert torch.isfinite(out.aux_loss) and out.aux_loss > 0


def test_gradient_reaches_resampler_and_heads_never_the_frozen_backbones():
    model = tiny_flamingo()
    wrapped = LatentObjectLoss(model, num_classes=(3, 2), weight=0.5)
    labels = torch.tensor([[[[0, 1], [2, 2]]] * 2] * 3)  # [B=3, M=2, K=2, A=2]
    wrapped(labels, **batch()).aux_loss.backward()
    assert all(h.weight.grad.abs().sum() > 0 for h in wrapped.heads)
    assert model.resampler.latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(p.grad is None for p in model.vision_encoder.parameters())


def test_skipped_labels_count_for_nothing():
    model = tiny_flamingo()
    wrapped = LatentObjectLoss(model, num_classes=(3, 2))
    x = batch()
    labels = torch.randint(0, 2, (3, 2, 2, 2), generator=torch.Generator().manual_seed(0))
    full = wrapped(labels, **x).aux_loss
    skipped = labels.clone()
    skipped[:, 1] = IGNORE  # the second media item of every sample carries no labels
    one = {**batch(m=1), "pixel_values": x["pixel_values"][:, :1]}
    only_first = wrapped(labels[:, :1].clone(), **one).aux_loss
    assert torch.allclose(wrapped(skipped, **x).aux_loss, only_first, atol=1e-6)
    assert not torch.allclose(full, only_first)
    assert wrapped(torch.full_like(labels, IGNORE), **x).aux_loss.item() == 0.0


def test_training_fits_labels_that_depend_on_the_image():
    """Labels that are a function of each image (a label per latent): resampler and heads together
    come to read them. (That gradient reaches the resampler is tested above.)"""
    torch.manual_seed(0)
    model = tiny_flamingo()
    wrapped = LatentObjectLoss(model, num_classes=(2,))
    optimizer = build_optimizer(wrapped, lr=1e-2)
    x = batch(b=8, m=1, seed=3)
    # object k of image b: is channel k's mean brightness above the batch median?
    means = x["pixel_values"][:, 0, 0].mean(dim=(-1, -2))  # [B, C]
    labels = (means > means.median(0).values).long()[:, None, :2, None]  # [B, 1, K=2, A=1]
    first = wrapped(labels, **x).aux_loss.item()
    for _ in range(60):
        optimizer.zero_grad()
        wrapped(labels, **x).aux_loss.backward()
        optimizer.step()
    assert wrapped(labels, **x).aux_loss.item() < 0.2 * first


@pytest.mark.parametrize("shape, match", [((3, 2, 2), r"expected \[B=3, M=2, K, A=2\], got \[3, 2, 2\]"),
                                          ((3, 1, 2, 2), r"expected \[B=3, M=2, K, A=2\], got \[3, 1, 2, 2\]"),
                                          ((3, 2, 5, 2), "5 objects per item, but the resampler has only 4")])
def test_bad_labels_are_named(shape, match):
    wrapped = LatentObjectLoss(tiny_flamingo(), num_classes=(3, 2))
    with pytest.raises(ValueError, match=match):
        wrapped(torch.zeros(shape, dtype=torch.long), **batch())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="weight: expected > 0"):
        LatentObjectLoss(tiny_flamingo(), num_classes=(3,), weight=0)
    with pytest.raises(ValueError, match="num_classes"):
        LatentObjectLoss(tiny_flamingo(), num_classes=())
    ids = interleaved_ids(1, 6, [[]])
    with pytest.raises(ValueError, match="object_labels: given for a batch without media"):
        LatentObjectLoss(tiny_flamingo(), num_classes=(3,))(torch.zeros(1, 1, 1, 1, dtype=torch.long), input_ids=ids)
