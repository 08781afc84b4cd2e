"""Where each Hugging Face causal LM keeps its stack of decoder layers, and its KV cache argument.

Layers: a table keyed by `config.model_type`, then a generic fallback: the one `nn.ModuleList`
whose length is `config.num_hidden_layers`. A model neither can place gets an error that
says which attribute to name (`decoder_layers_attr="model.layers"`).

The cache: transformers renamed the forward argument that carries the KV cache from
`past_key_values` to `cache` (5.24). It is read off the forward's signature, the public
contract, so a further rename is an error at construction, not a cache silently lost mid-way.
"""

from __future__ import annotations

import inspect

from torch import nn

CACHE_ARGUMENTS = ("cache", "past_key_values")

DECODER_LAYERS = {
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "bloom": "transformer.h",
    "falcon": "transformer.h",
    "gpt_bigcode": "transformer.h",
    "codegen": "transformer.h",
    "mpt": "transformer.blocks",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "phi": "model.layers",
    "phi3": "model.layers",
    "olmo": "model.layers",
    "smollm3": "model.layers",
}


def _get(module: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        module = getattr(module, name)
    return module


def find_decoder_layers(lm: nn.Module, attr: str | None = None) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, ModuleList) of the LM's decoder layers."""
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    path = attr or DECODER_LAYERS.get(model_type)
    if path is not None:
        try:
            layers = _get(lm, path)
        except AttributeError:
            raise ValueError(f"decoder_layers_attr: {type(lm).__name__} has no attribute {path!r}") from None
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"decoder_layers_attr: {path!r} is a {type(layers).__name__}, expected an nn.ModuleList")
        return path, layers
    n = getattr(getattr(lm, "config", None), "num_hidden_layers", None)
    found = [(name, m) for name, m in lm.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) == 1:
        return found[0]
    candidates = [name for name, m in lm.named_modules() if isinstance(m, nn.ModuleList)]
    raise ValueError(
        f"cannot find the decoder layers of model_type {model_type!r} ({type(lm).__name__}); pass "
        f"decoder_layers_attr='path.to.layers' naming its nn.ModuleList of decoder layers "
        f"(ModuleLists in this model: {candidates[:6]})")


def cache_argument(lm: nn.Module) -> str:
    """The name under which `lm.forward` takes its KV cache (CACHE_ARGUMENTS, newest first)."""
    parameters = inspect.signature(lm.forward).parameters
    for name in CACHE_ARGUMENTS:
        if name in parameters:
            return name
    raise ValueError(f"lm: {type(lm).__name__}.forward takes none of {CACHE_ARGUMENTS}; multisense needs to "
                     "hand the language model its KV cache")

