"""Pre-norm feed-forward block: LayerNorm -> Linear(D, mult*D) -> GELU -> Linear(mult*D, D).

No biases in the linears, as in the Flamingo resampler and gated blocks (the published
layout, so its parameter count matches public checkpoints). Shapes: [..., D] -> [..., D].
"""

from __future__ import annotations

from torch import nn


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, *, mult: int = 4):
        inner = int(dim * mult)
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))
