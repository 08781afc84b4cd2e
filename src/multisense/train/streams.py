"""The batches a run trains on, each resumable at a step. Data for the language-model families are
a procedural task (`data.task`, a name from `multisense.data.tasks.TASKS`) or files (`data.paths`:
JSONL and tar shards, `multisense.data.loaders`). Sample i of a task is drawn from its own seeded
generator, so the data position is just the step, and process r of N takes samples r, r+N, ... of
each global batch: 2 processes of batch b see exactly the samples of 1 process of batch 2b. With
files, process r reads the records numbered r modulo N; each process's loader has its own (epoch,
position), and a checkpoint holds every process's, so a resume continues at the next record of
each, whatever bad records were skipped. A family that trains on the touch world (fusion) gets
its episodes (`data.world`, simulated once and cached) for `data.task` from its sensors; its
data position is the step too. With `model.fusion.lm` the batches carry the questions as
input_ids / attention_mask / labels (loss on the answer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from ..data.collate import collate
from ..data.world.episodes import generate
from ..data.world.tasks import touch_batches, world_dataset
from . import distributed
from .settings import DataConfig, TrainConfig


def file_loader(cfg: DataConfig, env: distributed.Env, at: dict | None = None):
    """This process's DocumentLoader of `data.paths`, at `at` ({"epoch", "position"}: one entry
    of a checkpoint's data_position) or at the first record."""
    from ..data.loaders import DocumentLoader

    at = at or {"epoch": 0, "position": 0}
    return DocumentLoader(cfg.paths, image_size=cfg.image_size, mean=cfg.mean, std=cfg.std, on_error=cfg.on_error,
                          rank=env.rank, world_size=env.world_size, start=at["position"], epoch=at["epoch"])


def loader_positions(loader, env: distributed.Env) -> list[dict]:
    """Every process's {"epoch", "position"}, in rank order (a collective: every rank calls it)."""
    mine = torch.tensor([loader.epoch, loader.position], dtype=torch.long, device=env.device)
    gathered = [mine]
    if env.world_size > 1:
        gathered = [torch.empty_like(mine) for _ in range(env.world_size)]
        torch.distributed.all_gather(gathered, mine)
    return [{"epoch": epoch, "position": position} for epoch, position in (t.tolist() for t in gathered)]


def resume_position(manifest: dict, where: str, env: distributed.Env) -> dict:
    """This process's {"epoch", "position"} in the files from a checkpoint's manifest."""
    saved = manifest.get("data_position")
    if not isinstance(saved, list):
        raise ValueError(f"checkpoint {where}: holds no loader positions for data.paths (data_position "
                         f"{saved!r}: a task run's step, or a checkpoint from before per-process positions); "
                         "start afresh in a new train.out_dir")
    if len(saved) != env.world_size:
        # Process r owns the records r modulo N: at another N the records are shared out anew
        # and no set of positions continues each process's share exactly.
        raise ValueError(f"checkpoint {where}: written by {len(saved)} processes, resumed by {env.world_size}; "
                         "with data.paths each process resumes at its own place in the files, so resume "
                         f"with the same number of processes (torchrun --nproc_per_node {len(saved)})")
    return saved[env.rank]


def micro_batches(cfg: DataConfig, tokenizer, *, env: distributed.Env, grad_accum: int,
                  start_step: int, words: bool = False, loader=None, seq2seq: bool = False,
                  samples: bool = False) -> Iterator[dict]:
    """This process's micro-batches from `start_step` on: grad_accum per optimiser step. With
    files, they come from `loader` (file_loader; a fresh one at the first record if None).
    A task gives interleaved training documents, or with `samples` episodes (prompt -> answer, for
    a family that reads a prompt and writes an answer: PaLI). `seq2seq`: laid out for an
    encoder-decoder (collate)."""
    b, world = cfg.batch_size, env.world_size
    per_step = b * world * grad_accum  # samples in one global optimiser step
    if cfg.task:
        from ..data.tasks import get_task

        task = get_task(cfg.task, image_size=cfg.image_size, **cfg.task_args)
        step = start_step
        while True:
            first = step * per_step
            mine = range(first + env.rank, first + per_step, world)  # strided: the union over ranks is the batch
            for j in range(grad_accum):
                docs = [_example(task, np.random.default_rng([cfg.seed, i]), cfg.max_shots, samples)
                        for i in mine[j * b:(j + 1) * b]]
                yield collate(docs, tokenizer, words=words, seq2seq=seq2seq)
            step += 1
    from ..data.loaders import batches

    # The loader, not the step, knows where this process is in the files (bad records skipped,
    # passes wrapped): the trainer saves its epoch and position with every checkpoint.
    yield from batches(loader if loader is not None else file_loader(cfg, env), tokenizer, b, epochs=None,
                       seq2seq=seq2seq)


def _example(task, rng: np.random.Generator, max_shots: int, sample: bool):
    """One training example of `task`: an interleaved document, or an episode of 0..max_shots
    demonstrations and a query whose answer is the target (`sample`)."""
    if sample:
        return task.episode(rng, int(rng.integers(0, max_shots + 1)), "train")
    return task.training_document(rng, max_shots=max_shots)


def calibration_batches(cfg: DataConfig, tokenizer, *, samples: int, device: torch.device) -> Iterator[dict]:
    """The first `samples` training samples, the same on every process and for any batch size
    (for calibrate_media)."""
    size = max(d for d in range(1, min(samples, 32) + 1) if samples % d == 0)
    single = distributed.Env(device=device)
    cfg = dataclasses.replace(cfg, batch_size=size)
    # Files: the training loader reports the bad records it meets in its first epoch; this loader
    # reads the same records, so it starts as if in a later epoch, which reports none again.
    loader = None if cfg.task else file_loader(cfg, single, {"epoch": 1, "position": 0})
    batches = micro_batches(cfg, tokenizer, env=single, grad_accum=1, start_step=0, loader=loader)
    for _ in range(samples // size):
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in next(batches).items()}


def world_batches(cfg: TrainConfig, env: distributed.Env, start_step: int, tokenizer=None) -> Iterator[dict]:
    """This process's micro-batches of touch-world episodes (the fusion family): the main process
    simulates what is not cached, the others wait for it and read the cache. With a `tokenizer`
    (model.fusion.lm), the questions as token ids."""
    sensors = tuple(cfg.model.fusion.sensors)
    world = cfg.data.world
    if env.is_main:
        generate(world.episodes, world.seed, seconds=world.seconds, cache_dir=world.cache_dir, workers=world.workers,
                 log=print)
    distributed.barrier()
    dataset = world_dataset(cfg.data.world, task=cfg.data.task, sensors=sensors)
    return touch_batches(dataset, cfg.data.batch_size, cfg.data.seed, start_step=start_step, rank=env.rank,
                         world_size=env.world_size, grad_accum=cfg.train.grad_accum, tokenizer=tokenizer,
                         answers=cfg.model.fusion.answers)
