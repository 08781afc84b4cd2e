"""Two CPU processes (gloo): what DDP and FSDP2 synchronise, gather and resume.

Most tests run a worker function on both ranks with torch.multiprocessing (`two_processes`):
each runs in a fresh interpreter with the test process's sys.path (spawn passes it on), so it
imports this checkout's `multisense` and `tests`, and returns a picklable value per rank. The
others run `multisense train` under torchrun (`torchrun`), with this checkout's src first on
PYTHONPATH.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

from multisense.lm.adapters import find_decoder_layers
from multisense.tokens import IGNORE_INDEX as IGNORE
from multisense.train import checkpoint as ckpt
from multisense.train import distributed
from multisense.train.distill import InWordsDistillation
from multisense.train.loop import fit
from multisense.train.optim import build_optimizer
from multisense.train.slots import LatentObjectLoss
from tests.conftest import VOCAB, interleaved_ids, tiny_flamingo
from tests.models.test_flamingo import pixels
from tests.train.backbones import save_tiny_backbones
from tests.train.test_trainer import LINEAR_ADAM, ROOT, final_weights, overrides

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


class Collectives(TorchDispatchMode):
    """Counts, while active, the reductions (all-reduce, reduce-scatter) this process issues and
    the elements its all-gathers return (DDP's, FSDP2's and DTensor's collectives all pass
    through the dispatcher)."""

    def __init__(self):
        super().__init__()
        self.reductions = 0
        self.gathered = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "reduce_scatter" in name or "allreduce" in name:
            self.reductions += 1
        if func.overloadpacket is torch.ops._c10d_functional.all_gather_into_tensor:  # (input, group size, group)
            self.gathered += args[0].numel() * args[1]
        elif func.overloadpacket is torch.ops.c10d._allgather_base_:  # (output, input, ...)
            self.gathered += args[0].numel()
        return func(*args, **(kwargs or {}))


def wrap(model: torch.nn.Module, env: distributed.Env, strategy: str) -> torch.nn.Module:
    """As the trainer does it: FSDP2 shards each LM decoder layer, then the root."""
    return distributed.wrap(model, env, strategy, units=list(find_decoder_layers(model.lm)[1]))


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


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
    return {name: full(p.grad) for name, p in module.named_parameters() if p.requires_grad}


def objective_step(env: distributed.Env, strategy: str) -> dict:
    """One step of LatentObjectLoss on this rank's own samples; the gradients it leaves."""
    from torch.nn.parallel import DistributedDataParallel

    # The objective's own parameters would sit outside the wrapper: refused, for either objective
    with pytest.raises(ValueError, match="LatentObjectLoss: .* wrap the objective, not the model"):
        LatentObjectLoss(DistributedDataParallel(tiny_flamingo()), num_classes=(3, 2))
    with pytest.raises(ValueError, match="InWordsDistillation: .* wrap the objective, not the model"):
        InWordsDistillation(DistributedDataParallel(tiny_flamingo()), 1.0)
    objective = LatentObjectLoss(tiny_flamingo(gates=0.5), num_classes=(3, 2))
    trained = distributed.wrap(objective, env, strategy, units=list(find_decoder_layers(objective.model.lm)[1]))
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


# test_trainer's Adam with an update linear in the gradient, as build_optimizer's keywords
LINEAR = {k.removeprefix("optim."): v for k, v in LINEAR_ADAM.items()}


def micro_batch(step: int, micro: int, rank: int) -> dict:
    batch = slot_batch(2, seed=100 * step + 10 * micro + rank)
    batch.pop("object_labels")
    return batch


def accumulated_steps(env: distributed.Env, strategy: str, grad_accum: int, steps: int) -> dict:
    """Reductions in one step without accumulation, then per step in `steps` steps of
    `grad_accum` micro-batches; the trainable weights after the latter."""
    counts = {}
    for accum, n in ((1, 1), (grad_accum, steps)):
        model = tiny_flamingo(gates=0.5)
        trained = wrap(model, env, strategy)
        optimizer = build_optimizer(model, **LINEAR)
        batches = (micro_batch(s, i, env.rank) for s in range(n) for i in range(accum))
        with Collectives() as seen:
            fit(trained, batches, steps=n, grad_accum=accum, optimizer=optimizer, progress=False)
        counts[accum] = seen.reductions / n
    return {"reductions_per_step": counts, "weights": {k: full(v) for k, v in model.trainable_state_dict().items()}}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_gradients_sync_once_per_optimiser_step_under_gradient_accumulation(tmp_path, strategy):
    """The loop's own two all-reduces (token count, logged sums) and the gradients' reductions:
    as many per step with 3 micro-batches as with one (FSDP2 used to reduce-scatter on each)."""
    grad_accum, steps = 3, 2
    ranks = two_processes(accumulated_steps, tmp_path, strategy, grad_accum, steps)
    for r in ranks:
        once = r["reductions_per_step"][1]
        assert once > 2 and r["reductions_per_step"][grad_accum] == once, r["reductions_per_step"]
    # and the accumulated steps still train like one process on each step's union batch
    model = tiny_flamingo(gates=0.5)
    optimizer = build_optimizer(model, **LINEAR)
    batches = (union(*(micro_batch(s, i, r) for i in range(grad_accum) for r in range(WORLD))) for s in range(steps))
    fit(model, batches, steps=steps, optimizer=optimizer, progress=False)
    for k, expected in model.trainable_state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["weights"][k], expected, rtol=1e-5, atol=1e-6, msg=k)


def gathered_in_a_checkpoint(env: distributed.Env) -> dict:
    """After one FSDP2 step: the elements `_full_state` all-gathers, and what it returns."""
    from multisense.train.trainer import _full_state

    model = tiny_flamingo(gates=0.5, standardize_media=True)  # + media_mean/std: buffers saved, not sharded
    trained = wrap(model, env, "fsdp2")
    optimizer = build_optimizer(model, **LINEAR)
    fit(trained, (micro_batch(0, 0, env.rank) for _ in range(1)), steps=1, optimizer=optimizer, progress=False)
    with Collectives() as seen:
        weights, optim = _full_state(model, optimizer)
    # FSDP2 shards dim 0 in equal chunks of ceil(rows / world), so a gather returns that many rows per rank
    sizes = {n: -(-p.shape[0] // env.world_size) * env.world_size * p[0].numel()
             for n, p in model.named_parameters()}
    return {"gathered": seen.gathered, "weights": weights, "optim": optim,
            "trainable": sum(s for n, s in sizes.items() if model.get_parameter(n).requires_grad),
            "all": sum(sizes.values()), "full": {k: full(v) for k, v in model.trainable_state_dict().items()}}


def test_a_checkpoint_gathers_only_what_it_saves(tmp_path):
    """Under FSDP2, saving gathers the trainable weights and their two Adam moments, not the frozen
    backbones (which are most of the model: it used to gather them all, then keep the trainable)."""
    ranks = two_processes(gathered_in_a_checkpoint, tmp_path)
    for r in ranks:
        assert r["gathered"] == 3 * r["trainable"] < r["all"]
        assert r["weights"].keys() == r["full"].keys() and {"media_mean", "media_std"} <= r["weights"].keys()
        for k, v in r["full"].items():
            assert torch.equal(r["weights"][k], v), k
    state = ranks[0]["optim"]["state"]  # rank 0 writes the checkpoint
    assert {k for k, s in state.items() if "exp_avg" in s} == {k for k in ranks[0]["full"] if not k.startswith("media_")}


def torchrun(train_overrides: list[str]) -> dict:
    """`multisense train` on two processes; the summary it prints."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           "-m", "multisense", "train", *train_overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}  # this checkout's code and tests
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


def test_fsdp2_resumes_from_its_checkpoint_to_the_same_weights(backbones, tmp_path):
    """`multisense train` under torchrun with FSDP2: a run resumed from its step-2 checkpoint ends
    at step 4 with the weights of the run that went through."""
    run = {"train.distributed": "fsdp2"}
    assert torchrun(overrides(backbones, tmp_path / "whole", **run))["start_step"] == 0  # checkpoints at 2, 4
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000004")
    assert torchrun(overrides(backbones, tmp_path / "resumed", **run))["start_step"] == 2
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "resumed" / "checkpoints")] == ["step-000002",
                                                                                           "step-000004"]
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(resumed[k], whole[k]), k


def test_distillation_under_fsdp2_trains_like_under_ddp(backbones, tmp_path):
    """The in-words objective wrapped whole: its teacher pass reads the LM inside the objective's
    forward, where FSDP2 has gathered the LM's shards. (Not compared with one process of the
    doubled batch: the distance is normalised per micro-batch, by the teacher's norm at that
    micro-batch's markers, so it depends on how the batch is split.)"""
    extra = {"data.task": "fewshot_mapped", "data.task_args": "{}", "train.distill_words": 1.0, "train.steps": 2,
             "data.batch_size": 2, **LINEAR_ADAM}
    for strategy in ("ddp", "fsdp2"):
        torchrun(overrides(backbones, tmp_path / strategy, **{**extra, "train.distributed": strategy}))
    ddp, fsdp2 = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp2")
    assert ddp.keys() == fsdp2.keys()
    for k in ddp:
        torch.testing.assert_close(fsdp2[k], ddp[k], rtol=1e-5, atol=1e-6, msg=k)
