"""AdamW with the usual parameter groups, and a warmup + cosine schedule.

No weight decay on gates, norms, biases, latents, embeddings and other vectors: decaying a
tanh gate's alpha pulls it shut, decaying latents shrinks the resampler's queries. Gates may
get their own (larger) learning rate: a scalar alpha moves at most about lr per Adam step,
so at lr 1e-4 a gate needs thousands of steps to open.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def is_gate(name: str) -> bool:
    return name.endswith("alpha")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or is_gate(name) or name.endswith(("latents", "frame_embs.weight")) or "norm" in name


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.01, gate_lr: float | None = None,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in three groups: decayed, not decayed, gates."""
    groups = {"decay": [], "no_decay": [], "gates": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = "gates" if is_gate(name) else "no_decay" if no_weight_decay(name, p) else "decay"
        groups[key].append(p)
    params = [{"params": groups["decay"], "weight_decay": weight_decay, "name": "decay"},
              {"params": groups["no_decay"], "weight_decay": 0.0, "name": "no_decay"},
              {"params": groups["gates"], "weight_decay": 0.0, "lr": gate_lr or lr, "name": "gates"}]
    return torch.optim.AdamW([g for g in params if g["params"]], lr=lr, betas=betas, eps=eps)


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to each group's lr, then cosine decay to min_lr_ratio of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
