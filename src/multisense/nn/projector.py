"""The LLaVA projector (Liu et al. 2023; LLaVA-1.5, Liu et al. 2024): vision tokens to LM width.

    mlp2x_gelu   Linear(Dv, D) -> GELU -> Linear(D, D)     (LLaVA-1.5, Hugging Face's default)
    linear       Linear(Dv, D)                              (LLaVA-1)

Biases on, as in both papers and Hugging Face's `LlavaMultiModalProjector` (whose weights import
into this one). Shapes: [..., Dv] -> [..., D].
"""

from __future__ import annotations

from torch import nn

PROJECTORS = ("mlp2x_gelu", "linear")


class Projector(nn.Sequential):
    def __init__(self, dim_media: int, dim: int, *, kind: str = "mlp2x_gelu", bias: bool = True):
        if kind == "mlp2x_gelu":
            layers = [nn.Linear(dim_media, dim, bias=bias), nn.GELU(), nn.Linear(dim, dim, bias=bias)]
        elif kind == "linear":
            layers = [nn.Linear(dim_media, dim, bias=bias)]
        else:
            raise ValueError(f"projector: expected one of {PROJECTORS}, got {kind!r}")
        super().__init__(*layers)
        self.kind = kind
