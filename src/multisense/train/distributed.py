"""Distributed training through torchrun: DDP by default, FSDP2 (`fully_shard`) by option.

`torchrun --nproc_per_node N -m multisense train ...` sets RANK, WORLD_SIZE and LOCAL_RANK;
without them this is a single process and nothing is initialised. The backend is NCCL on
GPUs and gloo on CPUs. Only trainable parameters travel in gradient traffic: DDP reduces
parameters that require grad, and the frozen backbones never do.

What is wrapped is what is trained: the model, or a training objective around it
(`ObjectiveWrapper`, e.g. `train.slots.LatentObjectLoss`), whose own trainable parameters
(heads) must be synchronised like the model's. So an objective wraps the plain model and DDP
or FSDP2 wraps the objective, never the other way round.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("ddp", "fsdp2")


@dataclass(frozen=True)
class Env:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Env:
    """Initialise the process group when launched by torchrun; pick this process's device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo", device_id=dev if device == "cuda" else None)
    return Env(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, env: Env, strategy: str = "ddp", *, units: list[nn.Module] = (),
         find_unused_parameters: bool = False) -> nn.Module:
    """Wrap what is trained (the model, or an objective around it) for data parallelism. DDP
    returns a wrapper; FSDP2 shards `units` then the root in place."""
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed: expected one of {STRATEGIES}, got {strategy!r}")
    if env.world_size == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters is needed only when a batch may leave a trainable parameter out
        # of the graph (e.g. text-only batches skip the marker embedding); it costs a graph walk.
        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                       broadcast_buffers=False, find_unused_parameters=find_unused_parameters)
    from torch.distributed.fsdp import fully_shard

    for unit in units:  # e.g. each LM decoder layer: its weights are gathered only while it runs
        fully_shard(unit)
    fully_shard(model)
    return model


def is_wrapped(model: nn.Module) -> bool:
    """Whether `model` is already wrapped (DDP) or sharded (FSDP2) for data parallelism."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, (DistributedDataParallel, FSDPModule))


@contextlib.contextmanager
def no_sync(model: nn.Module):
    """Backward passes run inside (forward and backward both) accumulate gradients on this
    process without synchronising them; the next backward outside synchronises the sum.

    DDP has `no_sync`; an FSDP2 module has none but `set_requires_gradient_sync`, read when its
    backward reduce-scatters. A plain module has nothing to synchronise.
    """
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)  # recurses into the sharded units
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


class ObjectiveWrapper(nn.Module):
    """Base of the training objectives that wrap a plain model and add an `aux_loss` to its
    output (`train.distill`, `train.slots`).

    The model must not be wrapped for data parallelism yet: parameters of the objective outside
    the DDP/FSDP2 wrapper would get no gradient averaging, so each process would train its own
    copy. Wrap the objective instead: `distributed.wrap(Objective(model, ...), env)`.
    """

    def __init__(self, model: nn.Module):
        if is_wrapped(model):
            raise ValueError(f"{type(self).__name__}: got a model already wrapped for data parallelism "
                             f"({type(model).__name__}); wrap the objective, not the model: "
                             "distributed.wrap(objective, env)")
        super().__init__()
        self.model = model


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
