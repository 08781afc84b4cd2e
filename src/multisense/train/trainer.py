"""`multisense train`: a model of any registered family trained from its settings (`train.settings`),
on one CPU or under torchrun: set up (model, optimiser, resume, data), train (`train.loop.fit`),
check and save.

The run directory holds `checkpoints/step-*/` (atomic, exact resume), `logs/metrics.csv` and
TensorBoard event files, `config.yaml` (the resolved config) and, at the end, `model/`
(save_pretrained). A run started again with the same `out_dir` resumes from its newest
checkpoint (`train.resume: auto`): weights, optimiser, schedule, step, data position and RNG.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from ..config import to_dict
from ..data.world.tasks import answer_words
from ..lm.inject import checkpoint_layers
from ..models.conventions import check_context
from ..models.flamingo import FlamingoModel
from ..models.io import check_fits
from ..models.scoring import is_encoder_decoder, label_layout
from . import checkpoint as ckpt
from . import distributed
from .build import build_model, check_image_size, init_from, load_lm, transformer_blocks  # noqa: F401  (the run's API)
from .distill import InWordsDistillation
from .logs import RunLogger
from .loop import fit
from .optim import build_optimizer, warmup_cosine
from .settings import (  # noqa: F401
    CheckConfig,
    CheckFailed,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    resolve_preset,
    validate,
    with_class_names,
)
from .streams import calibration_batches, file_loader, loader_positions, micro_batches, resume_position, world_batches  # noqa: F401


def _precision(value: str, device: torch.device) -> str:
    if value == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return value


def _full_state(model: FlamingoModel, optimizer) -> tuple[dict, dict]:
    """Trainable weights (with the buffers saved beside them) and optimiser state keyed by
    parameter name, whole and on the CPU (the optimiser state on rank 0 only, which saves it).
    Under FSDP2 only these are gathered from their shards, not the frozen backbones: they are
    most of the model and never saved."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    weights = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
               for k, v in model.trainable_state_dict().items()}
    optim = get_optimizer_state_dict(model, optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return weights, optim


def _load_full_state(model, optimizer, weights: dict, optim: dict, *, where: str) -> None:
    """The inverse of _full_state, after checking the names and shapes of the weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    expected = {k: v.shape for k, v in model.trainable_state_dict().items()}
    check_fits(expected, weights, where)
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(full_state_dict=True, strict=False))


# What a run leaves in its out_dir (module docstring): any of them means a run is there.
RUN_FILES = ("config.yaml", "checkpoints", "logs", "model")


def check_out_dir(run: RunConfig) -> None:
    """train.resume=never starts from scratch: refuse an out_dir that holds a run already, whose
    checkpoints (pruned by keep_last against the new ones), metrics and model would mix with it."""
    out = Path(run.out_dir)
    held = [name for name in RUN_FILES if (out / name).exists()]
    if run.resume == "never" and held:
        raise FileExistsError(f"train.out_dir {out}: already holds a run ({', '.join(held)}) and train.resume=never "
                              "would mix a new run into it; choose a new train.out_dir, or train.resume=auto to "
                              "continue that run")


def train(cfg: TrainConfig, *, setup: Callable[[FlamingoModel], None] | None = None,
          measure: Callable[[int, FlamingoModel], dict | None] | None = None,
          check: Callable[[FlamingoModel, object, TrainConfig], dict] | None = None) -> dict:
    """Run (or resume) training as configured; returns a summary (steps, final loss, seconds, history).

    Hooks for experiments: `setup(model)` runs once before training (e.g. to re-initialise the
    gates), `measure(step, model)` at step 0 and after every step; what it returns joins the
    step's record (and the logs). `check(model, tokenizer, cfg)` measures the trained model
    against cfg.check (`multisense.eval.checks.held_out_check`; needed when check.shots is set):
    its report goes to out_dir/check.json, and a model that misses it raises CheckFailed
    instead of being written to model/.
    """
    cfg = with_class_names(cfg)
    validate(cfg)
    checked = bool(cfg.check.shots) or (cfg.model.on_world() and cfg.check.min_accuracy is not None)
    if checked and check is None:
        raise ValueError("check.shots: set, but train() was given no check function; pass "
                         "check=multisense.eval.checks.held_out_check (as `multisense train` does) or set check.shots=[]")
    check_out_dir(cfg.train)
    env = distributed.setup(cfg.train.device)
    run = cfg.train
    out = Path(run.out_dir)
    torch.manual_seed(run.seed)
    np.random.seed(run.seed)
    model, tokenizer = build_model(cfg.model, progress=run.progress and env.is_main)
    check_image_size(cfg.data, model, cfg.model.vision)
    if cfg.model.on_world() and model.flamingo is not None:
        for word in answer_words(cfg.data.task):  # a frozen LM says only its own words (model.fusion.answers)
            model.lm_tokens(word)
    model.to(env.device)
    family_config = cfg.model.family_config()
    if getattr(family_config, "standardize_media", False):  # before a checkpoint, which holds the same statistics
        model.calibrate_media(calibration_batches(cfg.data, tokenizer, samples=cfg.data.calibration_samples,
                                                  device=env.device))
    if cfg.model.init_from is not None:
        fresh = init_from(model, cfg.model.init_from)
        if env.is_main and fresh:
            print(f"model.init_from: {len(fresh)} trainable tensors start fresh (not in {cfg.model.init_from}), "
                  f"e.g. {fresh[0]}")
    if setup is not None:
        setup(model)
    if run.activation_checkpointing:
        checkpoint_layers(transformer_blocks(model, family_config))
    # DDP/FSDP2 wrap what is trained: the model, or the distillation objective around it.
    # FSDP2 replaces the parameters with sharded ones: wrap first, then build the optimiser
    # (over the model's parameters: the distillation has none of its own).
    words = run.distill_words > 0
    units = transformer_blocks(model, family_config) if hasattr(model, "lm") else []
    trained = distributed.wrap(InWordsDistillation(model, run.distill_words) if words else model, env,
                               run.distributed, units=units, find_unused_parameters=run.find_unused_parameters)
    optimizer = build_optimizer(model, lr=cfg.optim.lr, gate_lr=cfg.optim.gate_lr,
                                weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas, eps=cfg.optim.eps)
    scheduler = warmup_cosine(optimizer, warmup_steps=cfg.optim.warmup_steps, total_steps=run.steps,
                              min_lr_ratio=cfg.optim.min_lr_ratio)

    start_step, position = 0, None
    source = {"auto": ckpt.latest(out / "checkpoints"), "never": None}.get(run.resume, run.resume)
    if source is not None:
        manifest, weights, state = ckpt.load(source)
        if not cfg.data.task:
            position = resume_position(manifest, str(source), env)
        _load_full_state(model, optimizer, weights, state["optimizer"], where=str(source))
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(manifest["rng"], state["rng"])
        start_step = manifest["step"]

    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False))
    logger = RunLogger(out / "logs", enabled=env.is_main, resume=start_step > 0 or (out / "logs").exists(),
                       resume_step=start_step)
    loader = None if cfg.data.task else file_loader(cfg.data, env, position)
    if cfg.model.on_world():
        batches = world_batches(cfg, env, start_step, tokenizer)
    else:
        batches = micro_batches(cfg.data, tokenizer, env=env, grad_accum=run.grad_accum, start_step=start_step,
                                words=words, loader=loader, seq2seq=is_encoder_decoder(model),
                                samples=getattr(model, "trains_on_samples", False))
        first = next(batches)  # what does not fit the LM is refused before a step is taken
        check_context(model, first, where=f"data ({cfg.data.task or 'data.paths'})")
        batches = itertools.chain([first], batches)

    final_weights: dict = {}

    def save(step: int) -> None:
        weights, optim_state = _full_state(model, optimizer)
        final_weights.update(weights)
        # a task's sample i is seeded, so its position is the step; files: every process's loader
        data_position = step if loader is None else loader_positions(loader, env)
        if env.is_main:
            logger.flush()  # the logs on disk reach at least as far as the checkpoint
            rng_plain, rng_tensors = ckpt.rng_state()
            ckpt.save(out / "checkpoints", step=step, weights=weights, keep_last=run.keep_last,
                      state={"optimizer": optim_state, "scheduler": scheduler.state_dict(),
                             "rng": rng_tensors},
                      info={"data_position": data_position, "rng": rng_plain, "world_size": env.world_size,
                            "config": json.loads(json.dumps(to_dict(cfg)))})
        distributed.barrier()

    history: list[dict] = []

    def on_step(step: int) -> dict | None:
        return measure(step, model) if measure is not None else None

    def on_record(record: dict) -> None:
        step = record["step"]
        if step % run.log_every == 0 or step == run.steps:
            logger.log(step, record)
        # after the step's row is logged: a run killed after this checkpoint has every row up to it
        if step % run.save_every == 0 or step == run.steps:
            save(step)

    start = time.perf_counter()
    initial = measure(start_step, model) if measure is not None else None
    try:
        history = fit(trained, batches, steps=run.steps, optimizer=optimizer, scheduler=scheduler,
                      max_grad_norm=cfg.optim.max_grad_norm, grad_accum=run.grad_accum,
                      precision=_precision(run.precision, env.device), z_loss=run.z_loss,
                      start_step=start_step, progress=run.progress and env.is_main, desc="train",
                      on_step=on_step, on_record=on_record, layout=label_layout(model))
        report = None
        if checked:  # on every process (the same episodes): a sharded model evaluates together
            report = check(model, tokenizer, cfg)
            if env.is_main:
                (out / "check.json").write_text(json.dumps(report, indent=2) + "\n")
            if not report["passed"]:
                raise CheckFailed(f"the trained model missed its check ({'; '.join(report['reasons'])}), so no "
                                  f"model/ was written (report: {out / 'check.json'}; the last checkpoint is in "
                                  f"{out / 'checkpoints'}). Train again with another train.seed, or see "
                                  "docs/training.md, 'Checked runs'")
        if env.is_main:  # with the run's tokenizer, which every family keeps (from_lm) and saves
            model.save_pretrained(out / "model", state_dict=final_weights)
        # Every rank leaves together, so none tears its process group down while rank 0 still
        # writes model/ (an FSDP2 test run under heavy load once ended with a gloo rank aborting,
        # "terminate called without an active exception"). Only on success: after an error the
        # other ranks may never reach a barrier.
        distributed.barrier()
    finally:
        logger.close()
        distributed.teardown()
    seconds = time.perf_counter() - start
    return {"start_step": start_step, "steps": run.steps, "seconds": seconds,
            "final_loss": history[-1]["loss"] if history else None, "initial": initial, "check": report,
            "history": history}
