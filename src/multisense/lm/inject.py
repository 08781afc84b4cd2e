"""Attach new computation before chosen decoder layers of a Hugging Face LM, without
renaming or touching its weights.

Forward pre-hooks rewrite the `hidden_states` a layer receives, so the LM's own module tree,
state-dict keys and code paths (KV cache, generate, attention kernels) stay exactly as
shipped; removing the handles restores the original model.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

HiddenFn = Callable[[int, torch.Tensor], torch.Tensor]


def hook_before_layers(layers: nn.ModuleList, layer_ids: list[int], fn: HiddenFn) -> list[RemovableHandle]:
    """Before layer `layer_ids[i]` runs, replace its hidden states h by fn(i, h)."""

    def make_hook(i: int):
        def hook(module, args, kwargs):
            if args:
                new = fn(i, args[0])
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(i, kwargs["hidden_states"])}

        return hook

    return [layers[j].register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, j in enumerate(layer_ids)]


def cross_attn_layer_ids(num_layers: int, every: int) -> list[int]:
    """Layers that get a gated block in front: every n-th, counting so the last layer has one."""
    if not 1 <= every <= num_layers:
        raise ValueError(f"cross_attn_every: expected 1 to {num_layers} (the LM's number of layers), got {every}; "
                         "a larger value leaves the LM without any gated block")
    return [i for i in range(num_layers) if (i + 1) % every == 0]


class checkpoint_layers:
    """Activation checkpointing of decoder layers: their inner activations are recomputed in
    backward instead of stored. Only each layer's own `forward` is wrapped, so the pre-hooks
    (the gated blocks) run outside the recomputed region and keep their activations; the LM
    may stay in eval mode (Hugging Face's own switch only acts in training mode).
    `remove()` restores the layers."""

    def __init__(self, layers: nn.ModuleList):
        from torch.utils.checkpoint import checkpoint
        from transformers import Cache

        self.layers = list(layers)
        for layer in self.layers:
            inner = layer.forward  # the bound method of the class

            def forward(*args, _inner=inner, **kwargs):
                if not torch.is_grad_enabled():
                    return _inner(*args, **kwargs)
                # A layer that writes to a KV cache would write twice (forward, then recompute).
                if any(isinstance(v, Cache) for v in (*args, *kwargs.values())):
                    raise ValueError("activation checkpointing: a decoder layer got a KV cache while computing "
                                     "gradients; train with use_cache=False")
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

            layer.forward = forward

    def remove(self) -> None:
        for layer in self.layers:
            layer.__dict__.pop("forward", None)
