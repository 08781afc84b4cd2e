"""Force-torque encoder: a wrist sensor's 6-D wrench (Fx, Fy, Fz, Tx, Ty, Tz) sampled at
`sample_rate` (500 Hz) to proprioceptive tokens, by a causal 1D convolution stack (each token
sees only the past, so a stream can be encoded as it arrives) or, as an alternative, an LSTM.

Input layout: wrench [N, T, 6] in newtons and newton-metres, standardised by `mean` / `std`
(per channel), mask [N, T] (True = a real sample). Output token j summarises the samples up to
j * stride (stride = the product of the layers' strides): [N, ceil(T / stride), D], and its time
is that sample's, j * stride / sample_rate. A stream declared at another rate (`sample_rate=`)
is refused (the strides and kernels span a fixed number of samples); a wrench without one is
taken to be at 500 Hz.
Shape letters: N streams, T samples, D width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.checks import check_shape
from .base import EncoderOutput, check_rate, sample_times
from .registry import register_encoder


class CausalConv1d(nn.Conv1d):
    """A Conv1d padded on the left only: output i depends on inputs <= i * stride. [N, C, T] -> [N, C', ceil(T/s)]"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


@register_encoder
class ForceTorqueEncoder(nn.Module):
    name = "force_torque"
    sample_rate = 500.0
    layout = "wrench [N, T, 6] (N, N m); mask [N, T]"

    def __init__(self, *, dim: int = 64, kind: str = "conv", channels: int = 6, hidden: int = 64,
                 kernel_size: int = 5, strides: tuple[int, ...] = (5, 5), mean: list[float] | None = None,
                 std: list[float] | None = None):
        super().__init__()
        if kind not in ("conv", "lstm"):
            raise ValueError(f"kind: expected 'conv' or 'lstm', got {kind!r}")
        self.dim, self.kind, self.channels = dim, kind, channels
        self.stride = 1
        for s in strides:
            self.stride *= s
        self.register_buffer("mean", torch.tensor(mean or [0.0] * channels))
        self.register_buffer("std", torch.tensor(std or [1.0] * channels))
        if (self.std <= 0).any() or not torch.isfinite(self.std).all() or not torch.isfinite(self.mean).all():
            raise ValueError(f"std: expected finite positive values (and a finite mean), got {self.std.tolist()}")
        if kind == "conv":
            layers, width = [], channels
            for s in strides:
                layers += [CausalConv1d(width, hidden, kernel_size, stride=s), nn.GELU()]
                width = hidden
            self.body = nn.Sequential(*layers)
        else:
            self.body = nn.LSTM(channels, hidden, batch_first=True)
        self.out = nn.Linear(hidden, dim)

    def forward(self, wrench: torch.Tensor, mask: torch.Tensor | None = None,
                sample_rate: float | None = None) -> EncoderOutput:
        """-> tokens [N, S, D], mask and times [N, S], S = ceil(T / stride)."""
        check_rate(self, sample_rate)
        check_shape("wrench", wrench, "N T C", C=self.channels)
        x = (wrench - self.mean) / self.std
        if mask is not None:
            check_shape("mask", mask, "N T", N=wrench.shape[0], T=wrench.shape[1])
            mask = mask.bool()
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        if self.kind == "conv":
            h = self.body(x.transpose(1, 2)).transpose(1, 2)  # [N, T', hidden]
        else:
            h = self.body(x)[0][:, :: self.stride]  # the state after sample j * stride
        tokens = self.out(h)
        N, T, S = wrench.shape[0], wrench.shape[1], tokens.shape[1]
        times = sample_times(S, self.sample_rate, step=self.stride, device=tokens.device).expand(N, S)
        return EncoderOutput(tokens, None if mask is None else mask[:, :: self.stride], times, T / self.sample_rate)

    @classmethod
    def example(cls, n: int = 2, seconds: float = 0.5, *, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        T = max(1, round(seconds * cls.sample_rate))
        return {"wrench": torch.randn(n, T, 6, generator=g), "mask": torch.ones(n, T, dtype=torch.bool)}
