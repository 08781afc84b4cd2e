"""The one training loop: forward, finite-loss check, backward, clip once, step, schedule, log.

`batches` yields dicts of keyword arguments for `model(**batch)`, whose output has `.loss`.
A non-finite loss stops the run with an error naming the step, rather than passing NaN on
into the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm


def fit(model: nn.Module, batches: Iterator[dict], *, steps: int, optimizer: torch.optim.Optimizer,
        scheduler=None, max_grad_norm: float | None = 1.0, progress: bool = True, desc: str = "train",
        on_step: Callable[[int], dict | None] | None = None) -> list[dict]:
    """Train for `steps` optimiser steps; returns one record per step (loss, lr, grad_norm, ...)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    history: list[dict] = []
    smooth = None
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        loss = model(**next(batches)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss.item()}; stopping before it reaches the weights")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm else torch.tensor(float("nan"))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        record = {"step": step, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"],
                  "grad_norm": float(norm)}
        if on_step is not None:
            record.update(on_step(step) or {})
        history.append(record)
        smooth = record["loss"] if smooth is None else 0.95 * smooth + 0.05 * record["loss"]
        bar.set_postfix(loss=f"{smooth:.3f}")
    return history
