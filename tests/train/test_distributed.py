"""Two CPU processes (gloo), started with torch.multiprocessing: what DDP and FSDP2 synchronise.

Each worker runs in a fresh interpreter with the test process's sys.path (multiprocessing's
spawn passes it on), so it imports this checkout's `multisense` and `tests`. A worker returns
a picklable value per rank; `two_processes` gives the list [rank 0's, rank 1's].
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multisense.train import distributed
from multisense.train.distill import InWordsDistillation
from multisense.train.loop import fit
from multisense.train.slots import IGNORE, LatentObjectLoss
from tests.conftest import VOCAB, interleaved_ids, tiny_flamingo
from tests.models.test_flamingo import pixels

WORLD = 2


def _entry(rank: int, worker, tmp: str, args: tuple) -> None:
    torch.set_num_threads(1)  # two processes on a shared CPU
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        result = worker(distributed.Env(rank=rank, world_size=WORLD), *args)
        torch.save(result, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def two_processes(worker, tmp_path: Path, *args) -> list:
    """worker(env, *args) on ranks 0 and 1 of a gloo group; their return values, rank order."""
    mp.spawn(_entry, args=(worker, str(tmp_path), args), nprocs=WORLD)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def slot_batch(samples: int, seed: int) -> dict:
    """Two images per sample, next-token labels on the text, and object labels [B, M=2, K=2, A=2]."""
    ids = interleaved_ids(samples, 10, [[1, 5]] * samples, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels(samples, 2, seed=seed),
            "labels": ids.masked_fill(ids == VOCAB - 1, IGNORE),
            "object_labels": torch.randint(0, 3, (samples, 2, 2, 2), generator=g)}


def union(*batches: dict) -> dict:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def trainable_grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients of the trainable parameters by name, gathered whole if FSDP2 sharded them."""
    grads = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            g = p.grad.full_tensor() if isinstance(p.grad, torch.distributed.tensor.DTensor) else p.grad
            grads[name] = g.detach().clone()
    return grads


def objective_step(env: distributed.Env, strategy: str) -> dict:
    """One step of LatentObjectLoss on this rank's own samples; the gradients it leaves."""
    from torch.nn.parallel import DistributedDataParallel

    from multisense.lm.adapters import find_decoder_layers

    # The objective's own parameters would sit outside the wrapper: refused, for either objective
    with pytest.raises(ValueError, match="LatentObjectLoss: .* wrap the objective, not the model"):
        LatentObjectLoss(DistributedDataParallel(tiny_flamingo()), num_classes=(3, 2))
    with pytest.raises(ValueError, match="InWordsDistillation: .* wrap the objective, not the model"):
        InWordsDistillation(DistributedDataParallel(tiny_flamingo()), 1.0)
    objective = LatentObjectLoss(tiny_flamingo(gates=0.5), num_classes=(3, 2))
    units = find_decoder_layers(objective.model.lm)[1]
    trained = distributed.wrap(objective, env, strategy, units=list(units))
    optimizer = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.0)
    fit(trained, iter([slot_batch(2, seed=env.rank)]), steps=1, optimizer=optimizer, max_grad_norm=None,
        progress=False)
    return trainable_grads(objective)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_an_objectives_heads_get_the_gradient_averaged_over_processes(tmp_path, strategy):
    """Different samples per rank: every trainable parameter, the objective's heads included, ends
    the step with the gradient of the union batch on both ranks, as one process would compute it."""
    ranks = two_processes(objective_step, tmp_path, strategy)
    alone = LatentObjectLoss(tiny_flamingo(gates=0.5), num_classes=(3, 2))
    fit(alone, iter([union(slot_batch(2, seed=0), slot_batch(2, seed=1))]), steps=1, max_grad_norm=None,
        optimizer=torch.optim.SGD(alone.parameters(), lr=0.0), progress=False)
    expected = trainable_grads(alone)
    assert any(k.startswith("heads.") for k in expected)
    for grads in ranks:
        assert grads.keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(grads[k], expected[k], rtol=1e-5, atol=1e-7, msg=k)
