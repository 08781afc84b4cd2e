"""tanh gates (Flamingo, Alayrac et al. 2022, eq. 1): y = tanh(alpha) * x.

alpha starts at exactly 0, so a gated branch adds exactly nothing at initialisation and
the frozen language model underneath computes its original logits bit for bit. A scalar
gate has alpha of shape [1]; a per-channel (`vector`) gate has shape [D].
"""

from __future__ import annotations

import torch
from torch import nn


class TanhGate(nn.Module):
    def __init__(self, dim: int = 1, *, vector: bool = False, init: float = 0.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim if vector else 1,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha.tanh()

    def value(self) -> float:
        """Mean |tanh(alpha)|: how far open the gate is (for logs and plots)."""
        return self.alpha.detach().tanh().abs().mean().item()
