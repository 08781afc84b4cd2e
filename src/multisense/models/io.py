"""The one save/load of multisense: `config.json` + `model.safetensors` of the trainable weights.

A *model checkpoint*: what `save_pretrained` writes and `from_pretrained` reads. Frozen
backbones are not copied into it; their identity (where they load from, their type and a
fingerprint of their weights) is recorded so a checkpoint is never silently applied to another
backbone. Each file is written atomically (`multisense.files`). Nothing is unpickled. A
*training checkpoint* (`train.checkpoint`) holds a model checkpoint's weights plus the optimiser
state needed to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# The precisions a backbone may be reloaded in: a checkpoint records a fingerprint for each, so
# the same LM loaded with `dtype=torch.bfloat16` is recognised, and another LM is not.
FINGERPRINT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def fingerprint(module: nn.Module, dtype: torch.dtype = torch.float32) -> str:
    """A cheap identity of a module's weights: every name and shape, plus up to 256 evenly spaced
    values of each tensor (hashing all of a 7B model's bytes would take minutes), floating values
    rounded to `dtype`. Rounding the recorded fp32 weights to bf16 gives exactly what
    `from_pretrained(dtype=torch.bfloat16)` loads, so the fingerprint does not depend on the
    precision a backbone is loaded in, only on its weights."""
    h = hashlib.sha256()
    for name, p in module.state_dict().items():
        h.update(f"{name}:{tuple(p.shape)};".encode())
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)]
        if sample.is_floating_point():
            sample = sample.to(dtype)
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprints(module: nn.Module) -> dict[str, str]:
    """`fingerprint` at every precision of FINGERPRINT_DTYPES, as a checkpoint records them."""
    return {name: fingerprint(module, dtype) for name, dtype in FINGERPRINT_DTYPES.items()}


def same_weights(module: nn.Module, recorded: dict[str, str]) -> bool:
    """Whether `module` holds the weights `recorded` (by `fingerprints`) were taken of, in whatever
    precision it was loaded: compared at its lowest floating precision."""
    dtypes = {p.dtype for p in module.state_dict().values() if p.is_floating_point()}
    name = "float16" if torch.float16 in dtypes else "bfloat16" if torch.bfloat16 in dtypes else "float32"
    return recorded.get(name) == fingerprint(module, FINGERPRINT_DTYPES[name])


def write_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> Path:
    """The weights file of every checkpoint, model or training: safetensors, CPU, contiguous."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_file(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def save_checkpoint(directory: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write config.json and model.safetensors into `directory` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # weights first: a directory whose config.json exists always has matching weights beside it
    write_weights(directory / WEIGHTS_NAME, tensors)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_file(directory / CONFIG_NAME, lambda p: p.write_text(text))
    return directory


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: no {name}; expected a directory written by save_pretrained")
    config = json.loads((directory / CONFIG_NAME).read_text())
    try:
        tensors = load_file(str(directory / WEIGHTS_NAME))
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise ValueError(f"{directory / WEIGHTS_NAME}: corrupt or truncated safetensors file ({err})") from err
    return config, tensors


def check_fits(expected: dict[str, torch.Size], tensors: dict[str, torch.Tensor], where: str) -> None:
    """Require exactly the names of `expected`, with the same shapes."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: checkpoint does not fit the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    for name, t in tensors.items():
        if tuple(expected[name]) != tuple(t.shape):
            raise ValueError(f"{where}: {name} has shape {list(t.shape)} in the checkpoint, "
                             f"{list(expected[name])} in the model")


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], expected: list[str], where: str) -> None:
    """Copy `tensors` into `module`, requiring exactly the names in `expected`."""
    own = module.state_dict()
    check_fits({name: own[name].shape for name in expected}, tensors, where)
    module.load_state_dict(tensors, strict=False)
