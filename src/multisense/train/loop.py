"""The one training loop: forward, finite-loss check, backward, clip once, step, schedule, log.

`batches` yields dicts of keyword arguments for `model(**batch)`. With `labels` [B, L] (a
language model), the loss is computed here from the logits [B, E, V], summed over target
tokens and divided by the number of target tokens in the whole optimiser step: all
`grad_accum` micro-batches, on every process. So accumulating 4 micro-batches of 8, or 2 processes of 16, gives the
gradient of one batch of 32, whatever the padding. The model runs as evaluation runs it
(`models.scoring.scored_forward`): the family's `LabelLayout` says whether its forward reads the
labels (a decoder's input, a prefix-LM's causal answer), how they line up with the logits and
whether the logits predict the next token; nothing here branches on a family. An optional z-loss
(PaLM, Chowdhery et al. 2022) adds z_loss * log(Z)^2 per target token to keep the softmax
normaliser near 1.
Without labels the model's own `.loss` is used (e.g. the vision tower's patch losses), averaged over
the micro-batches.

A non-finite loss stops the run with an error naming the step, rather than passing NaN on
into the weights.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..models.scoring import LabelLayout, label_layout, scored_forward
from ..tokens import IGNORE_INDEX
from .distributed import no_sync


@contextlib.contextmanager
def hf_progress(enabled: bool):
    """transformers' own progress bars (loading and writing weights) on or off for a block, then
    back as they were (its switch is process-wide)."""
    from transformers.utils import logging

    before = logging.is_progress_bar_enabled()
    (logging.enable_progress_bar if enabled else logging.disable_progress_bar)()
    try:
        yield
    finally:
        (logging.enable_progress_bar if before else logging.disable_progress_bar)()


def target_count(labels: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """Tokens that carry loss: labels [B, L], shifted by one when the model predicts the next token."""
    return ((labels[:, 1:] if shift else labels) != IGNORE_INDEX).sum()


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, z_loss: float = 0.0,
                   shift: bool = True) -> tuple[torch.Tensor, ...]:
    """Summed cross-entropy (and z-loss) over target tokens, of the next token when `shift`;
    float32 whatever the logits."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    logits = logits.flatten(0, 1).float()  # [B*L', V]
    labels = labels.flatten()
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if not z_loss:
        return ce, ce.new_zeros(())
    keep = labels != IGNORE_INDEX
    z = torch.logsumexp(logits[keep], dim=-1).pow(2).sum() * z_loss
    return ce, z


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision: expected 'fp32' or 'bf16', got {precision!r}")


def to_device(value, device):
    """Tensors, also inside (nested) dicts such as a fusion model's per-sensor inputs, moved to `device`."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def fit(model: nn.Module, batches: Iterator[dict], *, steps: int, optimizer: torch.optim.Optimizer,
        scheduler=None, max_grad_norm: float | None = 1.0, grad_accum: int = 1, precision: str = "fp32",
        z_loss: float = 0.0, start_step: int = 0, progress: bool = True, desc: str = "train",
        on_step: Callable[[int], dict | None] | None = None,
        on_record: Callable[[dict], None] | None = None, layout: LabelLayout | None = None) -> list[dict]:
    """Train from `start_step` to `steps` optimiser steps; one record per step (loss, lr, grad_norm, ...).

    `layout`: the labels' layout of the model's family (default: the one `model` declares; pass
    the family's own when `model` wraps it, as DDP or a distillation objective do). `on_step(step)` runs after each optimiser step and may return extra fields for the record
    (e.g. gate values); `on_record(record)` then sees the complete record (e.g. to log it).

    `model` may be wrapped in DistributedDataParallel or sharded with FSDP2 (`distributed.wrap`);
    either way gradients are synchronised on the last micro-batch of each step only, and the
    loss is normalised over all processes.
    """
    if grad_accum < 1:
        raise ValueError(f"grad_accum: expected a positive integer, got {grad_accum}")
    layout = layout or label_layout(model)
    shift_labels = layout.shift_labels
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    history: list[dict] = []
    smooth = None
    # into a log that is no terminal (`make demo > log`) a bar would write a line per refresh: a few a minute
    bar = tqdm(range(start_step + 1, steps + 1), desc=desc, disable=not progress, dynamic_ncols=True,
               initial=start_step, total=steps, mininterval=0.1 if sys.stderr.isatty() else 20.0)
    for step in bar:
        micro = [next(batches) for _ in range(grad_accum)]
        # token labels: the loop computes the token loss; a model that sets token_labels = False (a
        # classifier) takes its labels itself and returns the loss
        token_mode = "labels" in micro[0] and getattr(getattr(model, "module", model), "token_labels", True)
        if token_mode:
            counts = torch.stack([target_count(b["labels"], shift_labels) for b in micro])  # on the host
            tokens = counts.sum().to(device)
            if world > 1:
                dist.all_reduce(tokens)
            denom = tokens.clamp(min=1).float()
        else:
            tokens, denom = torch.zeros((), device=device), torch.tensor(float(grad_accum * world), device=device)
        optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(3, device=device)  # cross-entropy, z-loss (summed over tokens or micro-batches), aux
        for i, batch in enumerate(micro):
            batch = to_device(batch, device)
            labels = batch.pop("labels", None) if token_mode else None
            # gradients are synchronised across processes once per optimiser step: on the last micro-batch
            with contextlib.nullcontext() if i == grad_accum - 1 else no_sync(model):
                with _autocast(precision, device):
                    if labels is not None:
                        out, labels = scored_forward(model, batch, labels, layout)
                    else:
                        out = model(**batch)
                if labels is not None:
                    # the step's normaliser counted the batch's targets: a budget that dropped some would skew it
                    scored, given = int(target_count(labels, shift_labels)), int(counts[i])
                    if scored != given:
                        raise ValueError(f"step {step}: the model scored {scored} of the batch's {given} target "
                                         "tokens (a sample over the LM's context lost its end); shorten the samples")
                    ce, z = token_loss_sum(out.logits, labels, z_loss, shift_labels)
                else:
                    ce, z = out.loss.float(), out.loss.new_zeros((), dtype=torch.float32)
                loss = (ce + z) / denom
                aux = getattr(out, "aux_loss", None)  # a per-micro-batch mean (e.g. InWordsDistillation)
                aux = aux.float() if aux is not None else loss.new_zeros(())
                loss = loss + aux / (grad_accum * world)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"step {step}: loss is {loss.item()}; "
                                             "stopping before it reaches the weights")
                # DDP and FSDP2 average gradients over processes; the loss is already normalised over all of them
                (loss * world).backward()
            sums += torch.stack([ce.detach(), z.detach(), aux.detach()])
        if world > 1:
            dist.all_reduce(sums)
        norm = nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm else torch.tensor(float("nan"))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        record = {"step": step, "loss": (sums[0] / denom).item(), "lr": optimizer.param_groups[0]["lr"],
                  "grad_norm": float(norm)}
        if token_mode:
            record["tokens"] = int(tokens)
        if z_loss:
            record["z_loss"] = (sums[1] / denom).item()
        if getattr(out, "aux_loss", None) is not None:
            record["aux_loss"] = (sums[2] / (grad_accum * world)).item()
        if on_step is not None:
            record.update(on_step(step) or {})
        if on_record is not None:
            on_record(record)
        history.append(record)
        smooth = record["loss"] if smooth is None else 0.95 * smooth + 0.05 * record["loss"]
        bar.set_postfix(loss=f"{smooth:.3f}", refresh=False)  # drawn at the bar's own interval
    return history
